"""Mixed-precision training on CPUs: ``--autocast-bf16`` runs the training forward under ``torch.autocast`` in
bfloat16.

Parameters, optimizer state, checkpoints, validation and generation stay float32; only the training forward's
matrix products (and what reads their outputs) run in bfloat16, which CPUs with AVX512-BF16 or AMX compute at up
to twice the float32 rate. A CPU without AVX-512 has no fast bfloat16 kernels at all (PyTorch falls back to
generic code: 1.3 GFLOP/s against float32's 65 on a 2-core AVX2 AMD EPYC here), and one with AVX-512 but
without AVX512-BF16 emulates them (training 3.3x slower than float32 on an Intel Xeon here), so there the flag
slows training down, and a warning says so. Which CPU is which is measured (:func:`fast_bfloat16_cpu`). On GPUs
fairseq's own ``--amp`` is the way (float16 with
loss scaling; cuDNN's GRU runs in float16 under any CUDA autocast), and the flag refuses to run there.

autocast casts a parameter once per forward (it caches casts of leaf tensors), but it casts every other float32
operand each time an operation reads it. Tensors that every decoder step reads (the attention values, the
step's fused weights) are therefore cast once, by ``cast``, before the step loop; and PyTorch's CPU GRU, which
autocast leaves in float32, is given bfloat16 operands by the encoder.
"""

import contextlib
import functools
import logging
from typing import Iterator, Optional

import torch
from torch import Tensor

from .deferred import autocast_enabled

logger = logging.getLogger(__name__)


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


#: bfloat16 autocast is chosen where a bfloat16 matrix product takes at most this share of float32's time. The
#: CPUs seen: AMD Zen 4 with AVX512-BF16 about 0.5 (fast); Intel Xeon with AVX-512 but without AVX512-BF16 or AMX,
#: where oneDNN emulates bfloat16, about 2-3 (training 3.3x slower); AMD Zen 3 with AVX2 only, no oneDNN bfloat16
#: kernels at all, about 50 (not timed: oneDNN says no).
FAST_RATIO = 0.8


def onednn_bfloat16() -> bool:
    """Whether oneDNN has bfloat16 kernels on this CPU at all: AVX-512 (native with AVX512-BF16, emulated
    without) or AMX on x86, BF16 instructions on ARM. A torch built without oneDNN is asked about AVX512-BF16."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch built without oneDNN
        supported = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
        return bool(supported is not None and supported())


def bfloat16_time_ratio(rows: int = 128, inner: int = 512, cols: int = 1536, repeats: int = 7) -> float:
    """Time of a bfloat16 matrix product over that of the same float32 product on this CPU (about 0.1 s): one
    thread (the ratio per core is what matters, and a second thread would wait on a busy core), the two
    products alternated after a warm-up, the best time of ``repeats`` of each. The default shape is one decoder
    step's GRU input product at Multi30k sizes: batch 128, 512 features, 3 x 512 gates."""
    import time

    a32, b32 = torch.randn(rows, inner), torch.randn(inner, cols)
    operands = {dtype: (a32.to(dtype), b32.to(dtype)) for dtype in (torch.float32, torch.bfloat16)}
    best = {dtype: float("inf") for dtype in operands}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for dtype, (a, b) in operands.items():  # warm-up: kernel selection, first-touch allocation
            torch.mm(a, b)
        for _ in range(repeats):
            for dtype, (a, b) in operands.items():
                start = time.perf_counter()
                torch.mm(a, b)
                best[dtype] = min(best[dtype], time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return best[torch.bfloat16] / max(best[torch.float32], 1e-9)


@functools.lru_cache(maxsize=None)
def fast_bfloat16_cpu() -> bool:
    """Whether bfloat16 autocast speeds training up on this CPU: oneDNN has bfloat16 kernels here, *and* a timed
    bfloat16 matrix product takes at most :data:`FAST_RATIO` of float32's time (emulated bfloat16 on AVX-512
    without AVX512-BF16 passes the first test and fails the second). Measured once per process."""
    if not onednn_bfloat16():
        return False
    ratio = bfloat16_time_ratio()
    logger.info("bfloat16 matrix product: %.2fx the time of float32 on this CPU", ratio)
    return ratio <= FAST_RATIO


@functools.lru_cache(maxsize=None)
def _warn_slow_bfloat16() -> None:
    """Log the warning for ``--autocast-bf16`` on a CPU without fast bfloat16, once per process (the cache)."""
    logger.warning(
        "--autocast-bf16: this CPU has no fast bfloat16 matrix products (measured slower than float32 here: "
        "native bfloat16 needs AVX512-BF16 or AMX), so bfloat16 autocast slows training down: train without "
        "--autocast-bf16"
    )


@contextlib.contextmanager
def training_autocast(enabled: bool, like: Tensor) -> Iterator[None]:
    """bfloat16 autocast on the CPU if ``enabled`` (in force even inside another autocast); otherwise nothing
    changes, and an outer autocast stays as it is. Raises ``ValueError`` if enabled for a tensor on another
    device; warns (once) if enabled on a CPU without fast bfloat16 arithmetic."""
    if not enabled:
        yield
        return
    if like.device.type != "cpu":
        raise ValueError(
            f"--autocast-bf16 is for training on CPUs (the model is on {like.device.type}); on GPUs use fairseq's "
            "--amp, or --bf16"
        )
    if not fast_bfloat16_cpu():
        _warn_slow_bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yield
