"""Mixed-precision training: ``--autocast-bf16`` runs the training forward under ``torch.autocast`` in bfloat16.

Parameters, optimizer state, checkpoints, validation and generation stay float32; only the training forward's
matrix products (and what reads their outputs) run in bfloat16, which CPUs with AVX512-BF16 or AMX and recent GPUs
compute at up to twice the float32 rate. (On GPUs fairseq's own ``--amp`` does the same in float16.)

autocast casts a parameter once per forward (it caches casts of leaf tensors), but it casts every other float32
operand each time an operation reads it. Tensors that every decoder step reads (the attention values, the
step's fused weights) are therefore cast once, by ``cast``, before the step loop; and PyTorch's CPU GRU, which
autocast leaves in float32, is given bfloat16 operands by the encoder.
"""

import contextlib
from typing import Iterator, Optional

import torch
from torch import Tensor


def autocast_dtype(tensor: Tensor) -> Optional[torch.dtype]:
    """The dtype autocast computes in on ``tensor``'s device, or None where autocast is off."""
    device = tensor.device.type
    if not torch.is_autocast_enabled(device):
        return None
    return torch.get_autocast_dtype(device)


def cast(tensor: Tensor) -> Tensor:
    """``tensor`` in autocast's dtype where autocast is on and ``tensor`` is float32; else ``tensor`` itself."""
    dtype = autocast_dtype(tensor)
    if dtype is None or tensor.dtype != torch.float32:
        return tensor
    return tensor.to(dtype)


@contextlib.contextmanager
def training_autocast(enabled: bool, like: Tensor) -> Iterator[None]:
    """bfloat16 autocast on ``like``'s device if ``enabled``; otherwise nothing changes (an outer autocast, e.g.
    fairseq's ``--amp``, stays in force)."""
    if not enabled:
        yield
        return
    with torch.autocast(like.device.type, dtype=torch.bfloat16):
        yield
