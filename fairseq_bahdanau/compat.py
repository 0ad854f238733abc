"""The one place that adapts fairseq 0.12 (``fairseq-fixed`` 0.12.3.1 on Python 3.11+) to today's torch.

1. Checkpoint loading. torch >= 2.6 loads files with ``torch.load(weights_only=True)``, which unpickles only
   allow-listed types. fairseq 0.12 calls ``torch.load`` without that argument and its checkpoints may hold an
   ``argparse.Namespace`` (``args`` of older checkpoints). Rather than switching the protection off
   (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``), we allow exactly the types fairseq checkpoints contain. fairseq
   imports ``--user-dir`` before loading any checkpoint, so importing this package is enough.

2. Batching. ``data_utils.batch_by_size`` of fairseq-fixed 0.12.3.1 silently drops the last
   ``len(indices) % --required-batch-size-multiple`` examples (default multiple: 8), so ``fairseq-generate``
   translates 1,008 of Multi30k's 1,014 validation sentences and training skips a few sentences every epoch.
   ``batch_by_size`` is wrapped so that whatever it left out is appended as a final batch (the lost examples are
   always the tail of ``indices``; the final batch is shorter than the multiple, as fairseq's own tail batch is).
   The wrapper is a no-op where the batching is already complete.

3. Checkpoint writes. fairseq saves a checkpoint atomically (``.tmp`` then rename) but then *copies* it to
   ``checkpoint_last.pt`` / ``checkpoint_best.pt`` in place, so a kill during the copy leaves a truncated
   ``checkpoint_last.pt`` and the restarted run cannot resume. Local copies now go to a temporary file that is
   renamed over the destination (``os.replace``, atomic on POSIX).

4. Checkpoint errors. ``load_checkpoint_to_cpu`` is wrapped so that a truncated or corrupt file, or a file whose
   unpickling would need a type that is not allow-listed (which may run code), fails with a ``CheckpointError``
   that names the file and the problem (the original error is chained).
"""

import argparse
import logging
import os
import pickle
import shutil
import traceback
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
        indices = np.asarray(indices if hasattr(indices, "__len__") else list(indices), dtype=np.int64)
        if len(indices) == 0:
            return []
        batches = original(indices, *args, **kwargs)
        covered = sum(len(b) for b in batches)
        if covered < len(indices):
            batches = list(batches) + [np.asarray(indices[covered:], dtype=np.int64)]
        return batches

    batch_by_size._keeps_every_example = True
    batch_by_size.__doc__ = original.__doc__
    data_utils.batch_by_size = batch_by_size


class CheckpointError(RuntimeError):
    """A checkpoint that cannot (or must not) be loaded; the message names the file and the reason."""


def atomic_checkpoint_copies() -> None:
    from fairseq.file_io import PathManager

    original = PathManager.copy
    if getattr(original, "_atomic", False):
        return

    def copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
        if PathManager.path_requires_pathmanager(dst_path):  # remote storage: leave it to iopath
            return original(src_path, dst_path, overwrite)
        if os.path.exists(dst_path) and not overwrite:
            return False
        tmp_path = dst_path + ".tmp"
        shutil.copyfile(src_path, tmp_path)
        os.replace(tmp_path, dst_path)
        return True

    copy._atomic = True
    PathManager.copy = staticmethod(copy)


def _raised_by_torch_load(error: BaseException) -> bool:
    """Whether ``error`` came out of ``torch.load`` reading the file (random or damaged bytes make its unpickler
    raise almost anything: UnicodeDecodeError, IndexError, KeyError, struct.error), rather than out of fairseq's
    handling of a checkpoint that loaded."""
    return any(frame.filename.endswith(os.path.join("torch", "serialization.py"))
               for frame in traceback.extract_tb(error.__traceback__))


def clear_checkpoint_errors() -> None:
    from fairseq import checkpoint_utils

    original = checkpoint_utils.load_checkpoint_to_cpu
    if getattr(original, "_clear_errors", False):
        return

    def load_checkpoint_to_cpu(path, arg_overrides=None, load_on_all_ranks=False):
        try:
            return original(path, arg_overrides, load_on_all_ranks)
        except pickle.UnpicklingError as e:
            lines = [line.strip() for line in str(e).splitlines()] or [type(e).__name__]
            blocked = next((line for line in lines if "GLOBAL" in line), None)
            if blocked is not None:  # a type outside the allow-list: the file would run code or is foreign
                raise CheckpointError(
                    f"refused to load checkpoint {path}: unpickling it needs a type that is not allow-listed, "
                    f"and such a file can run code when loaded ({blocked}). If you trust the file, add that type to "
                    "fairseq_bahdanau.compat.SAFE_GLOBALS."
                ) from e
            detail = next((line for line in lines if line.startswith("Unsupported")), None) or lines[0]
            raise CheckpointError(f"checkpoint {path} is truncated or corrupt and cannot be read ({detail})") from e
        except Exception as e:  # noqa: BLE001 (re-raised unless torch.load itself failed on the file's bytes)
            if isinstance(e, CheckpointError):
                raise
            text = str(e) or type(e).__name__
            if isinstance(e, EOFError) or "zip archive" in text or "corrupted" in text or _raised_by_torch_load(e):
                raise CheckpointError(
                    f"checkpoint {path} is truncated or corrupt and cannot be read ({text.splitlines()[0]})"
                ) from e
            raise

    load_checkpoint_to_cpu._clear_errors = True
    load_checkpoint_to_cpu.__doc__ = original.__doc__
    checkpoint_utils.load_checkpoint_to_cpu = load_checkpoint_to_cpu


allow_fairseq_checkpoints()
keep_every_example()
atomic_checkpoint_copies()
clear_checkpoint_errors()
