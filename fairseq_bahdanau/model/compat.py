"""The one place that adapts fairseq 0.12 (``fairseq-fixed`` 0.12.3.1 on Python 3.11+) to today's torch and to
training on CPUs. What each patch fixes, in a table, and why patches at all: docs/design.md ("Changes to fairseq");
each patch's details: the docstring of its function below.

How it works, for whoever adds or drops a patch:

* A :class:`Patch` is a name, a *probe* and an *apply* function, listed in :data:`PATCHES` in the order they are
  applied. The probe returns None where the behaviour the patch fixes is present here, or a short reason why the
  patch is not needed; it raises :class:`Undecided` where it cannot tell (fairseq's code moved, its source is not
  at hand), and then the patch is applied anyway, which is why every patch must be harmless where the bug is
  absent, and the log line says "applied without a decision". A probe changes nothing outside itself: no
  environment variable, no module attribute, no file outside a temporary directory (a probe that must see fairseq
  under other environment variables runs fairseq's code with globals of its own, :func:`_with_environ`).
* ``apply()`` installs the patch and returns what it replaced (the original, or None for additions), kept on the
  fairseq module itself with each patch's status, so that a second import or ``importlib.reload`` of this module
  neither patches twice nor forgets: :func:`original` and :func:`status` answer from there.
* The launcher's fixes (:data:`LAUNCH_FIXES`) are not wrappers stacked on each other: one hook on fairseq's
  ``call_main`` runs, at each launch, the fix of every applied patch in :data:`PATCHES` order, looked up then, so
  a reloaded module's fixes still run.
* Importing this module applies every patch not yet probed in this process and logs one line listing them.
  A patch that cannot be applied is named in a warning and left out; the others still apply.
* tests/test_compat.py shows, for each patch, what unpatched fairseq still does (with :func:`original`); it is
  skipped with the probe's reason where fairseq no longer does it. That is the day to drop the patch.
"""

import argparse
import dataclasses
import logging
import os
import pickle
import shutil
import signal
import sys
import traceback
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

logger = logging.getLogger(__name__)

#: Types found in checkpoints written by fairseq-train (see tests/test_reliability.py).
SAFE_GLOBALS = [argparse.Namespace]

#: Types in a loaded checkpoint's state (its omegaconf configuration, whose metadata names plain types such as
#: ``dict`` as objects) as rank 0 broadcasts it on resume.
BROADCAST_TYPES = ["builtins.dict", "builtins.list", "builtins.int", "builtins.float", "builtins.str", "builtins.bool",
                   "collections.defaultdict", "omegaconf.dictconfig.DictConfig", "omegaconf.listconfig.ListConfig",
                   "omegaconf.base.Metadata", "omegaconf.base.ContainerMetadata", "omegaconf.nodes.AnyNode",
                   "omegaconf.nodes.StringNode", "omegaconf.nodes.IntegerNode", "omegaconf.nodes.FloatNode",
                   "omegaconf.nodes.BooleanNode", "typing.Any",
                   "fairseq.distributed.utils._TensorPlaceholder"]  # what stands for a tensor sent separately

#: The variables torchrun (and torch.distributed.launch) set for every process it starts; fairseq's launcher
#: looks for the same four.
TORCHRUN_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot (or must not) be loaded; the message names the file and the reason."""


class LaunchError(RuntimeError):
    """A distributed launch that fairseq cannot run as asked; the message says how to start it instead."""


class Undecided(Exception):
    """Raised by a probe that cannot tell whether the behaviour its patch fixes is present; the message says why.
    The patch is then applied (every patch is harmless where the bug is absent)."""


@dataclasses.dataclass(frozen=True)
class Patch:
    """One change to fairseq.

    ``probe()`` returns None where the behaviour the patch fixes is present here, or a short reason why it is not
    (e.g. "fairseq keeps every example"), or raises :class:`Undecided`; ``apply()`` installs the patch and returns
    what it replaced (the original, or None for additions)."""

    name: str
    probe: Callable[[], Optional[str]]
    apply: Callable[[], Any]


def _originals() -> Dict[str, Any]:
    """Patch name -> what it replaced, kept on the fairseq module itself so that a second import of this module
    (e.g. ``importlib.reload``) cannot wrap fairseq's functions twice."""
    import fairseq

    return fairseq.__dict__.setdefault("_fairseq_bahdanau_originals", {})


def _statuses() -> Dict[str, str]:
    """Patch name -> "applied", "not needed: REASON" or "failed: ERROR", kept beside :func:`_originals`."""
    import fairseq

    return fairseq.__dict__.setdefault("_fairseq_bahdanau_status", {})


def original(name: str) -> Any:
    """What patch ``name`` replaced (a function or class of fairseq's, or None for additions)."""
    return _originals()[name]


def status(name: str) -> str:
    """Whether patch ``name`` was applied in this process: "applied", "applied without a decision: REASON" (its
    probe could not tell), "not needed: REASON" (the behaviour it fixes is absent from this fairseq) or "failed:
    ERROR"."""
    return _statuses()[name]


def applied(name: str) -> bool:
    """Whether patch ``name`` is in force in this process."""
    return _statuses().get(name, "").startswith("applied")


# ------------------------------------------------------------------------------------------- checkpoints


def allow_checkpoint_types() -> None:
    """torch >= 2.6 loads files with ``torch.load(weights_only=True)``, which unpickles only allow-listed types.
    fairseq 0.12 calls ``torch.load`` without that argument and its checkpoints may hold an ``argparse.Namespace``
    (``args`` of older checkpoints). Rather than switching the protection off
    (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``), exactly the types fairseq checkpoints contain are allowed. fairseq
    imports ``--user-dir`` before it loads any checkpoint, so importing this package is enough."""
    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is not None:  # torch < 2.4 has no allow-list (and loads everything)
        add(SAFE_GLOBALS)


def keep_every_example() -> Callable:
    """``data_utils.batch_by_size`` silently drops the last ``len(indices) % --required-batch-size-multiple`` examples
    (default multiple: 8): ``fairseq-generate`` translates 1,008 of Multi30k's 1,014 validation sentences and
    training skips a few sentences every epoch. Whatever it left out (always the tail of ``indices``) is appended as
    a final, shorter batch, as fairseq's own tail batch is."""
    from fairseq.data import data_utils

    original_fn = data_utils.batch_by_size

    def batch_by_size(indices, *args, **kwargs) -> List[np.ndarray]:
        indices = np.asarray(indices if hasattr(indices, "__len__") else list(indices), dtype=np.int64)
        if len(indices) == 0:
            return []
        batches = original_fn(indices, *args, **kwargs)
        covered = sum(len(b) for b in batches)
        if covered < len(indices):
            batches = list(batches) + [np.asarray(indices[covered:], dtype=np.int64)]
        return batches

    batch_by_size.__doc__ = original_fn.__doc__
    data_utils.batch_by_size = batch_by_size
    return original_fn


def atomic_checkpoint_copies() -> Callable:
    """fairseq saves a checkpoint atomically (``.tmp`` then rename) but then *copies* it to ``checkpoint_last.pt`` /
    ``checkpoint_best.pt`` in place, so a kill during the copy leaves a truncated ``checkpoint_last.pt``. Local
    copies go to a temporary file that is renamed over the destination (``os.replace``, atomic on POSIX); a copy
    that fails removes its temporary file."""
    from fairseq.file_io import PathManager

    original_fn = PathManager.copy

    def copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
        if PathManager.path_requires_pathmanager(dst_path):  # remote storage: leave it to iopath
            return original_fn(src_path, dst_path, overwrite)
        if os.path.exists(dst_path) and not overwrite:
            return False
        tmp_path = dst_path + ".tmp"
        try:
            shutil.copyfile(src_path, tmp_path)
            os.replace(tmp_path, dst_path)
        except BaseException:  # also KeyboardInterrupt: no half-written .tmp is left behind
            if os.path.exists(tmp_path):
                os.remove(tmp_path)
            raise
        return True

    PathManager.copy = staticmethod(copy)
    return original_fn


def _raised_by_torch_load(error: BaseException) -> bool:
    """Whether ``error`` came out of ``torch.load`` reading the file (random or damaged bytes make its unpickler
    raise almost anything: UnicodeDecodeError, IndexError, KeyError, struct.error), rather than out of fairseq's
    handling of a checkpoint that loaded."""
    return any(frame.filename.endswith(os.path.join("torch", "serialization.py"))
               for frame in traceback.extract_tb(error.__traceback__))


def clear_checkpoint_errors() -> Callable:
    """``load_checkpoint_to_cpu`` on a truncated or corrupt file, or on one whose unpickling needs a type that is not
    allow-listed (which may run code), fails with a :class:`CheckpointError` naming the file and the problem (the
    original error is chained) instead of whatever the unpickler happened to raise."""
    from fairseq import checkpoint_utils

    original_fn = checkpoint_utils.load_checkpoint_to_cpu

    def load_checkpoint_to_cpu(path, arg_overrides=None, load_on_all_ranks=False):
        try:
            return original_fn(path, arg_overrides, load_on_all_ranks)
        except pickle.UnpicklingError as e:
            lines = [line.strip() for line in str(e).splitlines()] or [type(e).__name__]
            blocked = next((line for line in lines if "GLOBAL" in line), None)
            if blocked is not None:  # a type outside the allow-list: the file would run code or is foreign
                raise CheckpointError(
                    f"refused to load checkpoint {path}: unpickling it needs a type that is not allow-listed, "
                    f"and such a file can run code when loaded ({blocked}). If you trust the file, add that type to "
                    "fairseq_bahdanau.model.compat.SAFE_GLOBALS."
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

    load_checkpoint_to_cpu.__doc__ = original_fn.__doc__
    checkpoint_utils.load_checkpoint_to_cpu = load_checkpoint_to_cpu
    return original_fn


# ------------------------------------------------------------------------------------------- distributed


def broadcast_globals() -> list:
    """The objects named by :data:`BROADCAST_TYPES`."""
    import importlib

    found = []
    for name in BROADCAST_TYPES:
        module, _, attr = name.rpartition(".")
        found.append(getattr(importlib.import_module(module), attr))
    return found


def broadcast_checkpoint_state() -> Callable:
    """On resume, rank 0 loads the checkpoint and *broadcasts* its state to the other ranks through ``torch.save`` and
    ``torch.load`` (``distributed_utils._broadcast_object_slow``); under torch >= 2.6 the receiving ranks'
    ``torch.load`` refuses the state's omegaconf configuration (``Unsupported global: omegaconf.dictconfig.
    DictConfig``), so every data-parallel run fails to resume. The receiving side now allows exactly the types such
    a state holds (:data:`BROADCAST_GLOBALS`), for that load only; the bytes come from rank 0 of the same job, which
    read the file under the checkpoint allow-list."""
    from fairseq.distributed import utils as distributed_utils

    original_fn = distributed_utils._broadcast_object_slow
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    if safe_globals is None:  # torch < 2.5: torch.load loads everything by default
        return original_fn
    allowed = broadcast_globals()

    def _broadcast_object_slow(obj, src_rank, group, dist_device):
        with safe_globals(allowed):
            return original_fn(obj, src_rank, group, dist_device)

    distributed_utils._broadcast_object_slow = _broadcast_object_slow
    return original_fn



def torchrun_environment() -> Optional[Tuple[int, int, int]]:
    """(world size, rank, local rank) when this process was started by torchrun; otherwise None."""
    if not all(key in os.environ for key in TORCHRUN_VARIABLES):
        return None
    return int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0))


def _on_cpu(cfg) -> bool:
    return bool(cfg.common.cpu) or not torch.cuda.is_available()


def _slurm() -> bool:
    return "SLURM_STEP_NODELIST" in os.environ or "SLURM_JOB_NODELIST" in os.environ


def prepare_launch(cfg) -> None:
    """Adapt ``cfg.distributed_training`` (in place) before fairseq's launcher reads it: see ``launch_on_cpu``."""
    dt = cfg.distributed_training
    if dt.distributed_init_method is not None or cfg.common.tpu:
        if _on_cpu(cfg) and dt.distributed_init_method is not None and not dt.distributed_no_spawn \
                and dt.distributed_world_size > 1:
            raise LaunchError(
                "--distributed-init-method without --distributed-no-spawn makes fairseq spawn one process per GPU, "
                "and this run has none. On CPUs start one process per rank yourself (with --distributed-no-spawn "
                "and --distributed-rank), or use torchrun: torchrun --nproc_per_node N $(which fairseq-train) ... "
                "--cpu --distributed-backend gloo"
            )
        return
    launched = torchrun_environment()
    if launched is not None:
        world, rank, local_rank = launched
        if world > 1 and dt.distributed_world_size != world:
            if dt.distributed_world_size != max(1, torch.cuda.device_count()):  # given on the command line
                logger.warning(
                    "--distributed-world-size %d disagrees with the %d processes torchrun started: training with "
                    "world size %d", dt.distributed_world_size, world, world,
                )
            else:
                logger.info("world size %d, from torchrun's environment", world)
            dt.distributed_world_size = world
        if world > 1 and _on_cpu(cfg):  # fairseq's own inference would divide by torch.cuda.device_count()
            dt.distributed_init_method = "env://"
            dt.distributed_rank = rank
            dt.device_id = local_rank
            dt.distributed_no_spawn = True
            if dt.distributed_backend == "nccl":
                logger.info("--distributed-backend gloo on CPU (NCCL needs GPUs)")
                dt.distributed_backend = "gloo"
        return
    if _on_cpu(cfg) and dt.distributed_world_size > 1 and not _slurm():
        raise LaunchError(
            f"--distributed-world-size {dt.distributed_world_size} on CPU: fairseq spawns one process per GPU and "
            "this run has none. Start the processes with torchrun instead, e.g. torchrun --nproc_per_node "
            f"{dt.distributed_world_size} $(which fairseq-train) ... --cpu --distributed-backend gloo (one node), "
            "or torchrun --nnodes M --node-rank R --nproc_per_node N --master-addr HOST --master-port PORT ... "
            "(several)"
        )


def _launch_fixes() -> List[Tuple[str, Callable[[Any], None]]]:
    """The launcher fixes in force, in PATCHES order: (patch name, fix), each fix adapting fairseq's configuration
    (or this process) before fairseq's ``call_main`` starts training. Looked up at each launch."""
    return [(patch.name, LAUNCH_FIXES[patch.name]) for patch in PATCHES
            if patch.name in LAUNCH_FIXES and applied(patch.name)]


def _launcher_hook() -> Callable:
    """Wrap fairseq's launcher, once, with one hook that runs every launcher fix in force (:func:`_launch_fixes`,
    looked up in this module at each launch, so that a reloaded module's fixes run); returns fairseq's own
    ``call_main``."""
    from fairseq.distributed import utils as distributed_utils

    current = distributed_utils.call_main
    wrapped = getattr(current, "__wrapped_by_fairseq_bahdanau__", None)
    if wrapped is not None:
        return wrapped

    def call_main(cfg, main, **kwargs):
        for _name, fix in _launch_fixes():
            fix(cfg)
        return current(cfg, main, **kwargs)

    call_main.__doc__ = current.__doc__
    call_main.__wrapped_by_fairseq_bahdanau__ = current
    distributed_utils.call_main = call_main
    return current


def _launch_fix(name: str) -> Callable:
    """Put patch ``name``'s fix (:data:`LAUNCH_FIXES`) in force: installs the launcher hook if needed (the fix runs
    once the patch's status says applied); returns fairseq's ``call_main``."""
    assert name in LAUNCH_FIXES
    return _launcher_hook()


def launch_on_cpu() -> Callable:
    """fairseq's launcher (``distributed_utils.call_main``) assumes one process per GPU. Under ``torchrun`` on CPUs it
    divides by ``torch.cuda.device_count()`` (``ZeroDivisionError``); without ``--distributed-world-size`` every
    process trains alone at world size 1 into the same ``--save-dir`` (on GPUs too, when torchrun starts more
    processes than the node has GPUs: e.g. one process per node on several nodes); spawning on CPU fails with "have
    0 available devices". Now: under torchrun the world size, rank and local rank come from torchrun's environment
    (a disagreeing ``--distributed-world-size`` is overridden, with a warning); on CPU the process group is gloo
    (NCCL needs GPUs); and a CPU run that asks fairseq to spawn processes stops with a message that shows the
    torchrun command instead."""
    return _launch_fix("launch_on_cpu")


def die_with_launcher(cfg=None) -> None:
    """In a process started by torchrun, ask Linux to kill this process when its launcher dies."""
    if "TORCHELASTIC_RUN_ID" not in os.environ or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1  # <linux/prctl.h>
    launcher = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):  # no prctl in this libc: leave it
        logger.warning("could not ask to be stopped with torchrun's launcher (prctl unavailable)")
        return
    if os.getppid() != launcher:  # the launcher died before the request was in place
        os.kill(os.getpid(), signal.SIGKILL)


def die_with_torchrun() -> Callable:
    """torchrun starts each worker in a session of its own, so a launcher killed with SIGKILL (by hand, or the OOM
    killer) leaves its workers training on, unseen, and a restarted job then resumes into the same ``--save-dir``
    while the orphans keep writing to it. A process started by torchrun (``TORCHELASTIC_RUN_ID`` set) asks Linux,
    when fairseq's launcher starts training (not at import), to kill it when its launcher dies
    (``prctl(PR_SET_PDEATHSIG, SIGKILL)``), as a scheduler's kill of the whole job would; checkpoints are written
    atomically, so nothing written is lost. Not a change to fairseq: to torchrun's process tree."""
    return _launch_fix("die_with_torchrun")


def cpu_ddp() -> Callable:
    """fairseq's ``DistributedFairseqModel`` passes ``device_ids=[device_id]`` to torch's ``DistributedDataParallel``
    (``--ddp-backend pytorch_ddp``/``c10d``, the default), which torch refuses for a module on the CPU. On CPU the
    wrapper is built with ``device_ids=None``; everything else is fairseq's."""
    import fairseq.models
    from fairseq.distributed import ModuleProxyWrapper
    from fairseq.models import distributed_fairseq_model
    from torch.nn.parallel import DistributedDataParallel

    original_fn = fairseq.models.DistributedFairseqModel

    def DistributedFairseqModel(args, model, process_group, device):  # noqa: N802 (fairseq's name)
        if torch.device(device).type != "cpu" or args.ddp_backend not in {"c10d", "pytorch_ddp"} \
                or getattr(args, "tpu", False):
            return original_fn(args, model, process_group, device)
        with warnings.catch_warnings():  # torch >= 2.12 deprecates broadcast_buffers, which fairseq still passes
            warnings.simplefilter("ignore", FutureWarning)
            wrapped = DistributedDataParallel(
                module=model.to(device),
                device_ids=None,  # a CPU module: torch refuses device ids
                broadcast_buffers=args.broadcast_buffers,
                bucket_cap_mb=args.bucket_cap_mb,
                process_group=process_group,
                find_unused_parameters=args.find_unused_parameters,
                gradient_as_bucket_view=args.gradient_as_bucket_view,
            )
        return ModuleProxyWrapper(wrapped)

    DistributedFairseqModel.__doc__ = original_fn.__doc__
    fairseq.models.DistributedFairseqModel = DistributedFairseqModel
    distributed_fairseq_model.DistributedFairseqModel = DistributedFairseqModel
    return original_fn


def bfloat16_on_this_device(cfg) -> None:
    from fairseq.distributed import utils as distributed_utils

    if cfg.common.bf16 and cfg.common.tpu and distributed_utils.xm is None:
        logger.info("--bf16 without torch_xla: bfloat16 on this device, not a TPU")
        cfg.common.tpu = False


def bf16_without_tpu() -> Callable:
    """``--bf16`` "implies --tpu" in fairseq's option parsing, so without ``torch_xla`` installed (on CPUs and GPUs)
    training fails with ``AttributeError: 'NoneType' object has no attribute 'xla_device'``. Where ``torch_xla`` is
    missing, ``--bf16`` now means what it means elsewhere in fairseq: the model and the batches in bfloat16 on the
    chosen device, with float32 master weights (fairseq's ``FP16Optimizer``)."""
    return _launch_fix("bf16_without_tpu")


def unflattened_fp16_on_cpu(cfg) -> None:
    if cfg.common.fp16 and not cfg.common.memory_efficient_fp16 and _on_cpu(cfg) \
            and not cfg.common.fp16_no_flatten_grads:
        logger.info("--fp16 on CPU: float32 master weights per parameter (--fp16-no-flatten-grads)")
        cfg.common.fp16_no_flatten_grads = True


def fp16_on_cpu() -> Callable:
    """``--fp16`` keeps its float32 master weights in one flat buffer that fairseq places on
    ``torch.cuda.current_device()`` ("Torch not compiled with CUDA enabled" on a CPU-only torch). On CPU the master
    weights are kept per parameter instead (fairseq's own ``--fp16-no-flatten-grads``)."""
    return _launch_fix("fp16_on_cpu")


def diverse_beam_batch_positions() -> Callable:
    """``DiverseBeamSearch`` (``--diverse-beam-groups``) indexes its per-sentence overlap counts, one row per sentence
    of the batch, with ``original_batch_idxs``, which ``SequenceGenerator`` fills with the sentences' dataset ids
    (``sample["id"]``): any batch but the first fails with ``IndexError: index 71 is out of bounds for dimension 0
    with size 64`` (with fairseq's own ``lstm`` too). The ids are mapped to their rows in the batch the search
    started with."""
    from fairseq.search import DiverseBeamSearch

    original_fn = DiverseBeamSearch.step

    def step(self, step: int, lprobs, scores, prev_output_tokens=None, original_batch_idxs=None):
        if original_batch_idxs is not None:
            if step == 0:  # the batch the overlap counts are laid out for
                self._batch_ids = original_batch_idxs.clone()
            rows = original_batch_idxs.unsqueeze(1).eq(self._batch_ids.unsqueeze(0))  # remaining x started
            original_batch_idxs = rows.long().argmax(dim=1)
        return original_fn(self, step, lprobs, scores, prev_output_tokens, original_batch_idxs)

    step.__doc__ = original_fn.__doc__
    DiverseBeamSearch.step = step
    return original_fn


# ------------------------------------------------------------------------------------------- probes
# Each returns None where the behaviour its patch fixes is present, else why the patch is not needed. They look
# at behaviour where that is cheap and side-effect free (a tiny batch, a file in a temporary directory), and at
# fairseq's source where only a training run would show it.


def _source(obj: Any) -> str:
    import inspect

    return inspect.getsource(obj)


def _shows(obj: Any, text: str) -> None:
    """Returns where ``obj``'s source holds ``text`` (the line of fairseq's that causes the bug); raises
    :class:`Undecided` where it does not, or where the source cannot be read: then the bug may be gone, or the line
    only reformatted."""
    name = getattr(obj, "__qualname__", repr(obj))
    try:
        source = _source(obj)
    except (OSError, TypeError) as e:
        raise Undecided(f"the source of {name} cannot be read ({e})") from None
    if text not in source:
        raise Undecided(f"{name} no longer reads {text!r}")


def _with_environ(function: Callable, environ: Dict[str, str]) -> Callable:
    """A copy of ``function`` (a module-level function) that sees ``environ`` as ``os.environ``, and calls copies of
    its module's functions that see it too: a probe's private view of another environment, which changes nothing
    of this process (not ``os.environ``, not the module)."""
    import types

    fake_os = types.ModuleType("os")
    fake_os.__dict__.update(os.__dict__)
    fake_os.environ = dict(environ)
    module_globals = dict(function.__globals__, os=fake_os)
    for key, value in function.__globals__.items():
        if isinstance(value, types.FunctionType) and value.__globals__ is function.__globals__:
            module_globals[key] = types.FunctionType(value.__code__, module_globals, value.__name__,
                                                     value.__defaults__, value.__closure__)
    return module_globals[function.__name__]


def _torch_load_refuses(obj: Any) -> bool:
    """Whether ``torch.load`` with its defaults refuses to unpickle ``obj``."""
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    try:
        torch.load(buffer)
    except pickle.UnpicklingError:
        return True
    return False


def refuses_namespaces() -> Optional[str]:
    if _torch_load_refuses({"args": argparse.Namespace(arch="lstm")}):
        return None
    return f"torch {torch.__version__} loads argparse.Namespace by default"


def drops_the_tail() -> Optional[str]:
    from fairseq.data import data_utils

    batches = data_utils.batch_by_size(np.arange(9, dtype=np.int64), lambda i: 1, max_sentences=8,
                                       required_batch_size_multiple=8)
    return None if sum(len(b) for b in batches) < 9 else "fairseq's batch_by_size keeps every example"


def copies_in_place() -> Optional[str]:
    """A copy over an existing file that keeps the file's inode wrote into it in place (a rename of a temporary
    file gives the destination a new inode)."""
    import tempfile

    from fairseq.file_io import PathManager

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "a"), os.path.join(tmp, "b")
        for path, content in (src, b"new"), (dst, b"old"):
            with open(path, "wb") as f:
                f.write(content)
        before = os.stat(dst).st_ino
        PathManager.copy(src, dst, overwrite=True)
        if os.stat(dst).st_ino == before:
            return None
    return "fairseq's PathManager.copy replaces the destination rather than writing into it"


def unclear_checkpoint_errors() -> Optional[str]:
    import tempfile

    from fairseq import checkpoint_utils

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "checkpoint_probe.pt")
        torch.save({"model": {"w": torch.zeros(64)}}, path)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
        try:
            checkpoint_utils.load_checkpoint_to_cpu(path)
        except Exception as e:  # noqa: BLE001 (any error: is it a clear one?)
            return "fairseq names the damaged checkpoint in its error" if path in str(e) else None
    return None  # a half file loaded: whatever this is, the patch's clear error is no worse


def broadcast_refuses_configs() -> Optional[str]:
    from fairseq.distributed import utils as distributed_utils
    from omegaconf import OmegaConf

    if "weights_only" in _source(distributed_utils._broadcast_object_slow):
        return "fairseq's broadcast chooses what torch.load may unpickle"
    if not _torch_load_refuses(OmegaConf.create({"a": 1})):
        return f"torch {torch.__version__} loads omegaconf configurations by default"
    return None


def ignores_torchrun_world() -> Optional[str]:
    """fairseq's launcher, given torchrun's environment for 2 processes and its default world size (1 on a
    machine with 0 or 1 GPUs), either keeps world size 1 (every process trains alone) or fails (on a machine
    without GPUs it divides by their number)."""
    from fairseq.dataclass.configs import DistributedTrainingConfig
    from fairseq.distributed import utils as distributed_utils

    cfg = DistributedTrainingConfig(distributed_world_size=1)
    torchrun = dict(MASTER_ADDR="127.0.0.1", MASTER_PORT="29999", WORLD_SIZE="2", RANK="0", LOCAL_RANK="0")
    try:
        _with_environ(distributed_utils.infer_init_method, torchrun)(cfg)
        if cfg.distributed_world_size == 2:
            return "fairseq's launcher takes torchrun's world size"
    except Exception:  # noqa: BLE001 (e.g. ZeroDivisionError on a machine without GPUs: the behaviour fixed)
        pass
    return None


def workers_outlive_torchrun() -> Optional[str]:
    if not sys.platform.startswith("linux"):
        return "no prctl outside Linux"
    from torch.distributed.elastic.multiprocessing.subprocess_handler import subprocess_handler

    _shows(subprocess_handler.SubprocessHandler._popen, "start_new_session")
    return None


def ddp_needs_device_ids() -> Optional[str]:
    from fairseq.models import distributed_fairseq_model

    # fairseq's own class, also once the patch has replaced it
    fairseq_own = _originals().get("cpu_ddp") or distributed_fairseq_model.DistributedFairseqModel
    _shows(fairseq_own, "device_ids=[args.device_id]")
    return None


def bf16_means_tpu() -> Optional[str]:
    from fairseq import options
    from fairseq.distributed import utils as distributed_utils

    if distributed_utils.xm is not None:
        return "torch_xla is installed: --bf16 on a TPU is fairseq's own meaning"
    args = options.parse_args_and_arch(options.get_training_parser(), ["data", "--arch", "lstm", "--bf16"])
    return None if args.tpu else "fairseq's --bf16 does not imply --tpu"


def fp16_master_weights_on_gpu() -> Optional[str]:
    from fairseq.optim.fp16_optimizer import FP16Optimizer

    _shows(FP16Optimizer.build_fp32_params, "torch.cuda.current_device()")
    return None


def diverse_beam_indexes_by_ids() -> Optional[str]:
    from fairseq.data import Dictionary
    from fairseq.search import DiverseBeamSearch

    dictionary = Dictionary()
    for i in range(6):
        dictionary.add_symbol(f"w{i}")
    search = DiverseBeamSearch(dictionary, num_groups=2, diversity_strength=0.5)
    lprobs = torch.zeros(2, 4, len(dictionary)).log_softmax(-1)
    ids = torch.tensor([5, 9])  # dataset ids, as SequenceGenerator passes them, not rows of the batch
    try:
        search.step(0, lprobs, None, None, ids)
        search.step(1, lprobs, torch.zeros(2, 4, 1), None, ids)
    except IndexError:
        return None
    return "fairseq's DiverseBeamSearch maps dataset ids to the batch's rows"


#: The launcher's fixes: patch name -> what it does to fairseq's configuration (or to this process) before
#: fairseq's ``call_main`` starts training.
LAUNCH_FIXES: Dict[str, Callable[[Any], None]] = {
    "launch_on_cpu": prepare_launch,
    "die_with_torchrun": die_with_launcher,
    "bf16_without_tpu": bfloat16_on_this_device,
    "fp16_on_cpu": unflattened_fp16_on_cpu,
}

#: Every patch, in the order it is applied (and, for the launcher's fixes, run).
PATCHES: List[Patch] = [
    Patch("allow_checkpoint_types", refuses_namespaces, allow_checkpoint_types),
    Patch("keep_every_example", drops_the_tail, keep_every_example),
    Patch("atomic_checkpoint_copies", copies_in_place, atomic_checkpoint_copies),
    Patch("clear_checkpoint_errors", unclear_checkpoint_errors, clear_checkpoint_errors),
    Patch("broadcast_checkpoint_state", broadcast_refuses_configs, broadcast_checkpoint_state),
    Patch("launch_on_cpu", ignores_torchrun_world, launch_on_cpu),
    Patch("die_with_torchrun", workers_outlive_torchrun, die_with_torchrun),
    Patch("cpu_ddp", ddp_needs_device_ids, cpu_ddp),
    Patch("bf16_without_tpu", bf16_means_tpu, bf16_without_tpu),
    Patch("fp16_on_cpu", fp16_master_weights_on_gpu, fp16_on_cpu),
    Patch("diverse_beam_batch_positions", diverse_beam_indexes_by_ids, diverse_beam_batch_positions),
]


def apply_patches() -> None:
    """Probe and apply every patch not yet probed in this process, and log the outcome in one line (once). A
    patch whose probe or installation fails is named in a warning and left out; the others still apply."""
    statuses, originals = _statuses(), _originals()
    new = [patch for patch in PATCHES if patch.name not in statuses]
    for patch in new:
        try:
            try:
                reason, undecided = patch.probe(), None
            except Undecided as why:
                reason, undecided = None, str(why)
            if reason is None:
                originals[patch.name] = patch.apply()
                statuses[patch.name] = "applied" if undecided is None else f"applied without a decision: {undecided}"
            else:
                statuses[patch.name] = f"not needed: {reason}"
        except Exception as e:  # noqa: BLE001 (one patch must not stop the model from loading)
            statuses[patch.name] = f"failed: {type(e).__name__}: {e}"
            logger.warning("fairseq_bahdanau.model.compat: patch %s could not be applied to this fairseq (%s: %s); "
                           "what it fixes stays unfixed", patch.name, type(e).__name__, e)
    if new:
        import fairseq

        done = [p.name if statuses[p.name] == "applied" else f"{p.name} ({statuses[p.name][len('applied '):]})"
                for p in new if statuses[p.name].startswith("applied")]
        skipped = [f"{p.name} ({statuses[p.name][len('not needed: '):]})" for p in new
                   if statuses[p.name].startswith("not needed")]
        logger.info("fairseq %s patched by fairseq_bahdanau.model.compat: %s%s", getattr(fairseq, "__version__", "?"),
                    ", ".join(done) or "nothing",
                    f"; not needed here: {', '.join(skipped)}" if skipped else "")


apply_patches()
