"""Mixed-precision training on CPUs: ``--autocast-bf16`` runs the training forward under ``torch.autocast`` in
bfloat16.

Parameters, optimizer state, checkpoints, validation and generation stay float32; only the training forward's
matrix products (and what reads their outputs) run in bfloat16, which CPUs with AVX512-BF16 or AMX compute at up
to twice the float32 rate. On GPUs fairseq's own ``--amp`` is the way (float16 with loss scaling; cuDNN's GRU
runs in float16 under any CUDA autocast), and the flag refuses to run there.

autocast casts a parameter once per forward (it caches casts of leaf tensors), but it casts every other float32
operand each time an operation reads it. Tensors that every decoder step reads (the attention values, the
step's fused weights) are therefore cast once, by ``cast``, before the step loop; and PyTorch's CPU GRU, which
autocast leaves in float32, is given bfloat16 operands by the encoder.
"""

import contextlib
from typing import Iterator, Optional

import torch
from torch import Tensor

from .deferred import autocast_enabled


def autocast_dtype(tensor: Tensor) -> Optional[torch.dtype]:
    """The dtype autocast computes in on ``tensor``'s device, or None where autocast is off."""
    if not autocast_enabled():  # cheap, and it works on every torch version
        return None
    device = tensor.device.type
    if hasattr(torch, "get_autocast_dtype"):  # torch >= 2.4
        return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
    if device == "cpu":
        return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
    return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None


def cast(tensor: Tensor) -> Tensor:
    """``tensor`` in autocast's dtype where autocast is on and ``tensor`` is float32; else ``tensor`` itself."""
    dtype = autocast_dtype(tensor)
    if dtype is None or tensor.dtype != torch.float32:
        return tensor
    return tensor.to(dtype)


@contextlib.contextmanager
def training_autocast(enabled: bool, like: Tensor) -> Iterator[None]:
    """bfloat16 autocast on the CPU if ``enabled`` (in force even inside another autocast); otherwise nothing
    changes, and an outer autocast stays as it is. Raises ``ValueError`` if enabled for a tensor on another
    device."""
    if not enabled:
        yield
        return
    if like.device.type != "cpu":
        raise ValueError(
            f"--autocast-bf16 is for training on CPUs (the model is on {like.device.type}); on GPUs use fairseq's "
            "--amp, or --bf16"
        )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yield
