"""The one place that adapts fairseq 0.12 (``fairseq-fixed`` 0.12.3.1 on Python 3.11+) to today's torch and to
training on CPUs.

Every change to fairseq's behaviour is a named :class:`Patch` in :data:`PATCHES`. Importing the package applies
each once (a second import changes nothing) and logs one line listing them. :func:`original` returns what a patch
replaced, so that tests can show the unpatched behaviour still exists (tests/test_compat.py): the day fairseq
fixes one of these, its "unpatched" test fails and the patch can be dropped. Any user of ``--user-dir
fairseq_bahdanau`` gets them, including the recipe's fairseq ``lstm`` peer, which is trained with this user dir
for exactly that reason.

``allow_checkpoint_types``
   torch >= 2.6 loads files with ``torch.load(weights_only=True)``, which unpickles only allow-listed types.
   fairseq 0.12 calls ``torch.load`` without that argument and its checkpoints may hold an ``argparse.Namespace``
   (``args`` of older checkpoints). Rather than switching the protection off (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``),
   exactly the types fairseq checkpoints contain are allowed. fairseq imports ``--user-dir`` before it loads any
   checkpoint, so importing this package is enough.
``keep_every_example``
   ``data_utils.batch_by_size`` silently drops the last ``len(indices) % --required-batch-size-multiple``
   examples (default multiple: 8): ``fairseq-generate`` translates 1,008 of Multi30k's 1,014 validation sentences
   and training skips a few sentences every epoch. Whatever it left out (always the tail of ``indices``) is
   appended as a final, shorter batch, as fairseq's own tail batch is.
``atomic_checkpoint_copies``
   fairseq saves a checkpoint atomically (``.tmp`` then rename) but then *copies* it to ``checkpoint_last.pt`` /
   ``checkpoint_best.pt`` in place, so a kill during the copy leaves a truncated ``checkpoint_last.pt``. Local
   copies go to a temporary file that is renamed over the destination (``os.replace``, atomic on POSIX); a copy
   that fails removes its temporary file.
``clear_checkpoint_errors``
   ``load_checkpoint_to_cpu`` on a truncated or corrupt file, or on one whose unpickling needs a type that is not
   allow-listed (which may run code), fails with a :class:`CheckpointError` naming the file and the problem (the
   original error is chained) instead of whatever the unpickler happened to raise.
``broadcast_checkpoint_state``
   On resume, rank 0 loads the checkpoint and *broadcasts* its state to the other ranks through ``torch.save``
   and ``torch.load`` (``distributed_utils._broadcast_object_slow``); under torch >= 2.6 the receiving ranks'
   ``torch.load`` refuses the state's omegaconf configuration (``Unsupported global: omegaconf.dictconfig.
   DictConfig``), so every data-parallel run fails to resume. The receiving side now allows exactly the types
   such a state holds (:data:`BROADCAST_GLOBALS`), for that load only; the bytes come from rank 0 of the same
   job, which read the file under the checkpoint allow-list.
``launch_on_cpu``
   fairseq's launcher (``distributed_utils.call_main``) assumes one process per GPU. Under ``torchrun`` on CPUs it
   divides by ``torch.cuda.device_count()`` (``ZeroDivisionError``); without ``--distributed-world-size`` every
   process trains alone at world size 1 into the same ``--save-dir`` (on GPUs too, when torchrun starts more
   processes than the node has GPUs: e.g. one process per node on several nodes); spawning on CPU fails with
   "have 0 available devices". Now: under torchrun the world size, rank and local rank come from torchrun's
   environment (a disagreeing ``--distributed-world-size`` is overridden, with a warning); on CPU the process
   group is gloo (NCCL needs GPUs); and a CPU run that asks fairseq to spawn processes stops with a message that
   shows the torchrun command instead.
``die_with_torchrun``
   torchrun starts each worker in a session of its own, so a launcher killed with SIGKILL (by hand, or the OOM
   killer) leaves its workers training on, unseen, and a restarted job then resumes into the same ``--save-dir``
   while the orphans keep writing to it. A process started by torchrun (``TORCHELASTIC_RUN_ID`` set) asks Linux
   to kill it when its launcher dies (``prctl(PR_SET_PDEATHSIG, SIGKILL)``), as a scheduler's kill of the whole
   job would; checkpoints are written atomically, so nothing written is lost. Not a change to fairseq: to
   torchrun's process tree.
``cpu_ddp``
   fairseq's ``DistributedFairseqModel`` passes ``device_ids=[device_id]`` to torch's
   ``DistributedDataParallel`` (``--ddp-backend pytorch_ddp``/``c10d``, the default), which torch refuses for a
   module on the CPU. On CPU the wrapper is built with ``device_ids=None``; everything else is fairseq's.
``bf16_without_tpu``
   ``--bf16`` "implies --tpu" in fairseq's option parsing, so without ``torch_xla`` installed (on CPUs and GPUs)
   training fails with ``AttributeError: 'NoneType' object has no attribute 'xla_device'``. Where ``torch_xla``
   is missing, ``--bf16`` now means what it means elsewhere in fairseq: the model and the batches in bfloat16 on
   the chosen device, with float32 master weights (fairseq's ``FP16Optimizer``).
``fp16_on_cpu``
   ``--fp16`` keeps its float32 master weights in one flat buffer that fairseq places on
   ``torch.cuda.current_device()`` ("Torch not compiled with CUDA enabled" on a CPU-only torch). On CPU the
   master weights are kept per parameter instead (fairseq's own ``--fp16-no-flatten-grads``).
``diverse_beam_batch_positions``
   ``DiverseBeamSearch`` (``--diverse-beam-groups``) indexes its per-sentence overlap counts, one row per
   sentence of the batch, with ``original_batch_idxs``, which ``SequenceGenerator`` fills with the sentences'
   dataset ids (``sample["id"]``): any batch but the first fails with ``IndexError: index 71 is out of bounds for
   dimension 0 with size 64`` (with fairseq's own ``lstm`` too). The ids are mapped to their rows in the batch
   the search started with.
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


@dataclasses.dataclass(frozen=True)
class Patch:
    """One change to fairseq: ``apply()`` installs it and returns what it replaced (the original)."""

    name: str
    apply: Callable[[], Any]


def _originals() -> Dict[str, Any]:
    """Patch name -> what it replaced, kept on the fairseq module itself so that a second import of this module
    (e.g. ``importlib.reload``) cannot wrap fairseq's functions twice."""
    import fairseq

    return fairseq.__dict__.setdefault("_fairseq_bahdanau_originals", {})


def original(name: str) -> Any:
    """What patch ``name`` replaced (a function or class of fairseq's, or None for additions)."""
    return _originals()[name]


# ------------------------------------------------------------------------------------------- checkpoints


def allow_checkpoint_types() -> None:
    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is not None:  # torch < 2.4 has no allow-list (and loads everything)
        add(SAFE_GLOBALS)


def keep_every_example() -> Callable:
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


def _fix_call_main(fix: Callable[[Any], None]) -> Callable:
    """Wrap fairseq's launcher so that ``fix(cfg)`` adapts the configuration before it runs; returns what was
    wrapped."""
    from fairseq.distributed import utils as distributed_utils

    original_fn = distributed_utils.call_main

    def call_main(cfg, main, **kwargs):
        fix(cfg)
        return original_fn(cfg, main, **kwargs)

    call_main.__doc__ = original_fn.__doc__
    distributed_utils.call_main = call_main
    return original_fn


def launch_on_cpu() -> Callable:
    return _fix_call_main(prepare_launch)


def die_with_torchrun() -> None:
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


def cpu_ddp() -> Callable:
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
    return _fix_call_main(bfloat16_on_this_device)


def unflattened_fp16_on_cpu(cfg) -> None:
    if cfg.common.fp16 and not cfg.common.memory_efficient_fp16 and _on_cpu(cfg) \
            and not cfg.common.fp16_no_flatten_grads:
        logger.info("--fp16 on CPU: float32 master weights per parameter (--fp16-no-flatten-grads)")
        cfg.common.fp16_no_flatten_grads = True


def fp16_on_cpu() -> Callable:
    return _fix_call_main(unflattened_fp16_on_cpu)


def diverse_beam_batch_positions() -> Callable:
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


#: Every patch, in the order it is applied.
PATCHES: List[Patch] = [
    Patch("allow_checkpoint_types", allow_checkpoint_types),
    Patch("keep_every_example", keep_every_example),
    Patch("atomic_checkpoint_copies", atomic_checkpoint_copies),
    Patch("clear_checkpoint_errors", clear_checkpoint_errors),
    Patch("broadcast_checkpoint_state", broadcast_checkpoint_state),
    Patch("launch_on_cpu", launch_on_cpu),
    Patch("die_with_torchrun", die_with_torchrun),
    Patch("cpu_ddp", cpu_ddp),
    Patch("bf16_without_tpu", bf16_without_tpu),
    Patch("fp16_on_cpu", fp16_on_cpu),
    Patch("diverse_beam_batch_positions", diverse_beam_batch_positions),
]


def apply_patches() -> None:
    """Apply every patch not yet applied in this process, and log which (once)."""
    originals = _originals()
    new = [patch for patch in PATCHES if patch.name not in originals]
    for patch in new:
        originals[patch.name] = patch.apply()
    if new:
        import fairseq

        logger.info("fairseq %s patched by fairseq_bahdanau.compat: %s", getattr(fairseq, "__version__", "?"),
                    ", ".join(patch.name for patch in new))


apply_patches()
