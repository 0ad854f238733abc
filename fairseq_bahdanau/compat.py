"""The one place that adapts fairseq 0.12 (``fairseq-fixed`` 0.12.3.1 on Python 3.11+) to today's torch.

1. Checkpoint loading. torch >= 2.6 loads files with ``torch.load(weights_only=True)``, which unpickles only
   allow-listed types. fairseq 0.12 calls ``torch.load`` without that argument and its checkpoints may hold an
   ``argparse.Namespace`` (``args`` of older checkpoints). Rather than switching the protection off
   (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``), we allow exactly the types fairseq checkpoints contain. fairseq
   imports ``--user-dir`` before loading any checkpoint, so importing this package is enough.

2. Batching. The compiled ``batch_by_size`` of fairseq-fixed 0.12.3.1 silently drops the last
   ``len(indices) % --required-batch-size-multiple`` examples (default multiple: 8), so ``fairseq-generate``
   translates 1,008 of Multi30k's 1,014 validation sentences and training skips a few sentences every epoch.
   ``batch_by_size`` is wrapped so that whatever it left out is appended as a final batch (the lost examples are
   always the tail of ``indices``; the final batch is shorter than the multiple, as fairseq's own tail batch is).
   The wrapper is a no-op where the batching is already complete.
"""

import argparse
import logging
from typing import List

import numpy as np
import torch

logger = logging.getLogger(__name__)

#: Types found in checkpoints written by fairseq-train (see tests/test_reliability.py).
SAFE_GLOBALS = [argparse.Namespace]


def allow_fairseq_checkpoints() -> None:
    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is not None:  # torch < 2.4 has no allow-list (and loads everything)
        add(SAFE_GLOBALS)


def keep_every_example() -> None:
    from fairseq.data import data_utils

    original = data_utils.batch_by_size
    if getattr(original, "_keeps_every_example", False):
        return

    def batch_by_size(indices, *args, **kwargs) -> List[np.ndarray]:
        batches = original(indices, *args, **kwargs)
        covered = sum(len(b) for b in batches)
        if covered < len(indices):
            batches = list(batches) + [np.asarray(indices[covered:], dtype=np.int64)]
        return batches

    batch_by_size._keeps_every_example = True
    batch_by_size.__doc__ = original.__doc__
    data_utils.batch_by_size = batch_by_size


allow_fairseq_checkpoints()
keep_every_example()
