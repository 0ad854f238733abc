"""The one place that adapts fairseq 0.12 to today's torch.

torch >= 2.6 loads files with ``torch.load(weights_only=True)``, which unpickles only allow-listed types.
fairseq 0.12 calls ``torch.load`` without that argument and its checkpoints hold a few non-tensor objects.
Rather than switching the protection off (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``), we allow exactly the types
fairseq checkpoints contain. fairseq imports ``--user-dir`` before loading any checkpoint, so importing this
package is enough.
"""

import argparse
import logging

import torch

logger = logging.getLogger(__name__)

#: Types found in checkpoints written by fairseq-train (see tests/test_checkpoints.py).
SAFE_GLOBALS = [argparse.Namespace]


def allow_fairseq_checkpoints() -> None:
    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is not None:  # torch < 2.4 has no allow-list (and loads everything)
        add(SAFE_GLOBALS)


allow_fairseq_checkpoints()
