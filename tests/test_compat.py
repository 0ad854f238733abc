"""compat.py, patch by patch: what unpatched fairseq (or torch) still does, and what the patch makes of it.

Each "unpatched" test calls what the patch replaced (``compat.original(name)``) and shows the problem is still
there. Each is skipped, with the probe's reason, where the patch's probe found the problem absent from the
installed fairseq (the patch then stands aside); the day that happens everywhere, the patch can be dropped. The
patched behaviour of the distributed and precision patches is proven end to end in test_launch.py and
test_precision.py; the checkpoint patches in test_reliability.py.
"""

import argparse
import inspect
import io
import logging
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from fairseq import options
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

from fairseq_bahdanau.model import compat
from helpers import USER_DIR

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="shows what fairseq does on a machine without CUDA")


def needs(name: str):
    """Skip unless patch ``name`` was applied here (its probe found the behaviour it fixes)."""
    return pytest.mark.skipif(not compat.applied(name), reason=f"{name}: {compat.status(name)}")


def training_cfg(*flags: str):
    """fairseq-train's configuration for ``flags`` (nothing is read from the data directory)."""
    args = options.parse_args_and_arch(
        options.get_training_parser(), ["data-bin", "--user-dir", USER_DIR, "--arch", "bahdanau_gru_tiny", *flags])
    return convert_namespace_to_omegaconf(args)


@pytest.fixture
def torchrun_env(monkeypatch):
    """This process as torchrun's rank 1 of 2 on one node."""
    for key, value in dict(MASTER_ADDR="127.0.0.1", MASTER_PORT="29999", WORLD_SIZE="2", RANK="1",
                           LOCAL_RANK="1").items():
        monkeypatch.setenv(key, value)


def test_patches_are_named_applied_once_and_listed_in_one_log_line():
    names = [patch.name for patch in compat.PATCHES]
    assert len(set(names)) == len(names)
    # after a reload, the launcher's fixes still run: bf16_without_tpu turns --bf16's implied --tpu off
    code = ("import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stdout); "
            "import fairseq, fairseq_bahdanau, importlib; importlib.reload(fairseq_bahdanau.model.compat); "
            "from fairseq.distributed import utils; from fairseq import options; "
            "from fairseq.dataclass.utils import convert_namespace_to_omegaconf; "
            "print('hooks', utils.call_main.__wrapped_by_fairseq_bahdanau__.__module__); "
            "cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), "
            "['data', '--arch', 'lstm', '--bf16', '--cpu'])); print('tpu before', cfg.common.tpu); "
            "utils.call_main(cfg, lambda cfg, **kwargs: print('tpu at launch', cfg.common.tpu))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(USER_DIR)).stdout
    lines = [line for line in out.splitlines() if "patched by fairseq_bahdanau.model.compat" in line]
    assert len(lines) == 1  # the reload applied nothing twice
    applied = [name for name in names if compat.status(name) == "applied"]
    assert ", ".join(applied) in lines[0]
    if compat.applied("bf16_without_tpu"):
        assert "tpu before True" in out and "tpu at launch False" in out
    for name in names:  # every patch is in the line: applied, or skipped with the probe's reason
        assert name in lines[0]
    assert "hooks fairseq.distributed.utils" in out  # one hook on call_main, over fairseq's own


def test_launcher_fixes_run_in_one_hook_in_patch_order(monkeypatch):
    from fairseq.distributed import utils as distributed_utils

    launch = [patch.name for patch in compat.PATCHES
              if patch.name in compat.LAUNCH_FIXES and compat.applied(patch.name)]
    assert [name for name, _ in compat._launch_fixes()] == launch
    assert distributed_utils.call_main.__wrapped_by_fairseq_bahdanau__.__module__ == "fairseq.distributed.utils"
    ran = []
    monkeypatch.setattr(compat, "LAUNCH_FIXES", {name: lambda cfg, name=name: ran.append(name) for name in launch})
    monkeypatch.setattr(distributed_utils, "call_main", lambda cfg, main, **kwargs: ran.append("fairseq"))
    assert compat._launcher_hook() is not distributed_utils.call_main  # it returns what it wrapped
    distributed_utils.call_main("cfg", "main")
    assert ran == launch + ["fairseq"]  # every fix, in PATCHES order, then fairseq's own launcher


def test_a_patch_that_cannot_apply_is_named_and_the_others_still_apply(monkeypatch, caplog):
    statuses = {}
    monkeypatch.setattr(compat, "_statuses", lambda: statuses)
    monkeypatch.setattr(compat, "_originals", lambda: {})

    def broken():
        raise AttributeError("module 'fairseq.search' has no attribute 'DiverseBeamSearch'")

    def reformatted():  # a text probe whose line of fairseq's was reformatted: it cannot tell, so it applies
        def fairseq_function(args):
            return dict(device_ids=[ args.device_id ])  # noqa: E201, E202 (the line, reformatted)
        compat._shows(fairseq_function, "device_ids=[args.device_id]")

    installed = []
    monkeypatch.setattr(compat, "PATCHES", [
        compat.Patch("needed", lambda: None, lambda: "replaced"),
        compat.Patch("broken", lambda: None, broken),
        compat.Patch("fixed_upstream", lambda: "fairseq does it right", lambda: pytest.fail("applied")),
        compat.Patch("undecided", reformatted, lambda: installed.append("undecided")),
    ])
    with caplog.at_level(logging.INFO, logger="fairseq_bahdanau.model.compat"):
        compat.apply_patches()
    assert statuses["needed"] == "applied"
    assert statuses["broken"].startswith("failed: AttributeError")
    assert statuses["fixed_upstream"] == "not needed: fairseq does it right"
    assert statuses["undecided"].startswith("applied without a decision:") and installed == ["undecided"]
    assert "no longer reads 'device_ids=[args.device_id]'" in statuses["undecided"]
    warning = next(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "patch broken could not be applied" in warning and "DiverseBeamSearch" in warning
    line = next(r.getMessage() for r in caplog.records if "patched by" in r.getMessage())
    assert "needed, undecided (without a decision: " in line
    assert line.endswith("; not needed here: fixed_upstream (fairseq does it right)")


#: The patches whose probes look at what fairseq does through the function that the patch replaces: run again
#: after patching, they find the behaviour gone (the others look at fairseq's own code, or at a hook).
SEES_ITS_OWN_FIX = {"allow_checkpoint_types", "keep_every_example", "atomic_checkpoint_copies",
                    "clear_checkpoint_errors", "diverse_beam_batch_positions"}


@pytest.mark.parametrize("name", [patch.name for patch in compat.PATCHES])
def test_every_probe_answers_without_side_effects_and_sees_its_patch_work(name):
    before = dict(os.environ), shutil.copyfile, dict(sys.modules["fairseq.distributed.utils"].__dict__)
    patch = next(p for p in compat.PATCHES if p.name == name)
    try:
        reason = patch.probe()
    except compat.Undecided as why:
        pytest.fail(f"the probe of {name} cannot decide on the fairseq it was written for: {why}")
    assert reason is None or (isinstance(reason, str) and reason)
    # nothing of the process changed: no torchrun variables, no function of shutil's or fairseq's replaced
    assert (dict(os.environ), shutil.copyfile, dict(sys.modules["fairseq.distributed.utils"].__dict__)) == before
    if compat.status(name) == "applied":
        assert (reason is not None) == (name in SEES_ITS_OWN_FIX), reason


# ---------------------------------------------------------------------------------------------- checkpoints


@needs("allow_checkpoint_types")
def test_unpatched_torch_load_refuses_fairseq_checkpoint_types(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"args": argparse.Namespace(arch="lstm")}, path)
    allowed = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    try:
        with pytest.raises(pickle.UnpicklingError, match="argparse.Namespace"):
            torch.load(path)
    finally:
        torch.serialization.add_safe_globals(allowed)
    assert torch.load(path)["args"].arch == "lstm"  # patched: allow-listed


@needs("keep_every_example")
def test_unpatched_batch_by_size_drops_the_tail_and_patched_keeps_it():
    from fairseq.data import data_utils

    indices = np.random.RandomState(0).permutation(1014).astype(np.int64)
    sizes = np.random.RandomState(1).randint(1, 30, 1014).astype(np.int64)
    for kwargs in ({"max_tokens": 4000}, {"max_sentences": 50}):
        common = dict(required_batch_size_multiple=8, num_tokens_vec=sizes[indices], **kwargs)
        unpatched = compat.original("keep_every_example")(indices, lambda i: sizes[i], **common)
        assert sum(len(b) for b in unpatched) < len(indices)
        batches = data_utils.batch_by_size(indices, lambda i: sizes[i], **common)
        assert np.array_equal(np.concatenate(batches), indices)


@needs("atomic_checkpoint_copies")
def test_unpatched_checkpoint_copy_is_not_atomic_and_patched_copy_cleans_up(tmp_path, monkeypatch):
    from fairseq.file_io import PathManager

    src, dst = tmp_path / "checkpoint3.pt", tmp_path / "checkpoint_last.pt"
    src.write_bytes(b"new" * 1000)

    def crashing_copy(a, b):
        with open(b, "wb") as f:
            f.write(b"ne")  # half-written
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "copyfile", crashing_copy)
    dst.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        compat.original("atomic_checkpoint_copies")(str(src), str(dst), overwrite=True)
    assert dst.read_bytes() == b"ne"  # unpatched: the old checkpoint is gone, the new one truncated
    dst.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        PathManager.copy(str(src), str(dst), overwrite=True)
    assert dst.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == sorted([dst.name, src.name])


@needs("clear_checkpoint_errors")
def test_unpatched_loading_of_a_damaged_checkpoint_raises_whatever_the_unpickler_hit(tmp_path):
    path = tmp_path / "checkpoint_last.pt"
    torch.save({"model": {"w": torch.zeros(1000)}}, path)
    path.write_bytes(path.read_bytes()[:-300])
    with pytest.raises(Exception) as unpatched:
        compat.original("clear_checkpoint_errors")(str(path))
    assert not isinstance(unpatched.value, compat.CheckpointError) and str(path) not in str(unpatched.value)
    from fairseq import checkpoint_utils

    with pytest.raises(compat.CheckpointError, match="truncated or corrupt"):
        checkpoint_utils.load_checkpoint_to_cpu(str(path))


# ---------------------------------------------------------------------------------------------- distributed


@needs("broadcast_checkpoint_state")
def test_unpatched_broadcast_of_a_checkpoint_state_fails_under_weights_only():
    """Rank 0 broadcasts the loaded state with torch.save; the other ranks torch.load it (weights_only)."""
    from fairseq.distributed import utils as distributed_utils

    assert "torch.load(buffer" in inspect.getsource(compat.original("broadcast_checkpoint_state"))
    cfg = training_cfg("--cpu")
    tensors = []
    sent = distributed_utils._split_tensors_from_obj({"cfg": cfg, "model": {"w": torch.ones(2)}}, tensors)
    buffer = io.BytesIO()
    torch.save(sent, buffer)
    with pytest.raises(pickle.UnpicklingError, match="omegaconf"):
        torch.load(io.BytesIO(buffer.getvalue()), map_location="cpu")
    with torch.serialization.safe_globals(compat.broadcast_globals()):  # what the patch allows, for this load only
        received = torch.load(io.BytesIO(buffer.getvalue()), map_location="cpu")
    assert received["cfg"].model._name == "bahdanau_gru_tiny"


@no_cuda
@needs("launch_on_cpu")
def test_unpatched_torchrun_launch_divides_by_the_gpu_count_or_trains_alone(torchrun_env):
    from fairseq.distributed import utils as distributed_utils

    cfg = training_cfg("--cpu", "--distributed-world-size", "2")
    with pytest.raises(ZeroDivisionError):
        distributed_utils.infer_init_method(cfg.distributed_training)
    cfg = training_cfg("--cpu")  # no --distributed-world-size: every process would train alone
    distributed_utils.infer_init_method(cfg.distributed_training)
    assert cfg.distributed_training.distributed_init_method is None
    assert cfg.distributed_training.distributed_world_size == 1


@needs("launch_on_cpu")
def test_patched_torchrun_launch_takes_torchrun_world_and_gloo(torchrun_env, caplog):
    for flags, warned in (([], False), (["--distributed-world-size", "4"], True)):
        cfg = training_cfg("--cpu", *flags)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="fairseq_bahdanau.model.compat"):
            compat.prepare_launch(cfg)
        dt = cfg.distributed_training
        assert (dt.distributed_world_size, dt.distributed_rank, dt.device_id) == (2, 1, 1)
        assert dt.distributed_init_method == "env://" and dt.distributed_no_spawn
        assert dt.distributed_backend == "gloo"
        assert any("disagrees" in r.message for r in caplog.records) == warned


@no_cuda
@needs("launch_on_cpu")
def test_unpatched_spawn_on_cpu_fails_on_device_count_and_patched_names_torchrun():
    from fairseq.distributed import utils as distributed_utils

    cfg = training_cfg("--cpu", "--distributed-world-size", "2")
    with pytest.raises(AssertionError, match="0 available devices"):
        distributed_utils.infer_init_method(cfg.distributed_training)
    cfg = training_cfg("--cpu", "--distributed-world-size", "2")
    with pytest.raises(compat.LaunchError, match="torchrun --nproc_per_node 2"):
        compat.prepare_launch(cfg)


@needs("die_with_torchrun")
def test_torchrun_still_starts_workers_in_sessions_of_their_own():
    """Why die_with_torchrun exists: a SIGKILLed launcher's workers are in no process group of its own."""
    from torch.distributed.elastic.multiprocessing.subprocess_handler import subprocess_handler

    assert "start_new_session" in inspect.getsource(subprocess_handler.SubprocessHandler._popen)


@needs("cpu_ddp")
def test_unpatched_ddp_wrapper_refuses_a_cpu_model_and_patched_wraps_it(tmp_path):
    import torch.distributed as dist

    from fairseq.models import DistributedFairseqModel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        args = training_cfg("--cpu").distributed_training
        args.device_id = 0
        with pytest.raises(ValueError, match="device_ids"):
            compat.original("cpu_ddp")(args, torch.nn.Linear(2, 2), dist.group.WORLD, torch.device("cpu"))
        wrapped = DistributedFairseqModel(args, torch.nn.Linear(2, 2), dist.group.WORLD, torch.device("cpu"))
        assert isinstance(wrapped.module, torch.nn.parallel.DistributedDataParallel)
        wrapped(torch.ones(1, 2)).sum().backward()
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------- precision


@needs("bf16_without_tpu")
def test_unpatched_bf16_means_tpu_and_patched_means_this_device():
    from fairseq import utils

    cfg = training_cfg("--cpu", "--bf16")
    assert cfg.common.tpu  # fairseq: "--bf16 implies --tpu"
    with pytest.raises(AttributeError, match="xla_device"):
        utils.get_tpu_device()  # where the unpatched trainer goes without torch_xla
    compat.bfloat16_on_this_device(cfg)
    assert cfg.common.bf16 and not cfg.common.tpu


@no_cuda
@needs("fp16_on_cpu")
def test_unpatched_fp16_optimizer_puts_its_master_weights_on_a_gpu_and_patched_does_not():
    from fairseq.optim.fp16_optimizer import FP16Optimizer

    cfg = training_cfg("--cpu", "--fp16")
    params = [torch.nn.Parameter(torch.ones(3, dtype=torch.float16))]
    with pytest.raises((AssertionError, RuntimeError)):
        FP16Optimizer.build_fp32_params(cfg.distributed_training, params, flatten=True)
    compat.unflattened_fp16_on_cpu(cfg)
    assert cfg.common.fp16_no_flatten_grads
    master = FP16Optimizer.build_fp32_params(cfg.distributed_training, params, flatten=False)
    assert master[0].dtype == torch.float32


# ---------------------------------------------------------------------------------------------- search


def diverse_beam_steps(step_fn, ids):
    """Two steps of DiverseBeamSearch (2 groups, beam 4) over a batch of 2 sentences with dataset ids ``ids``."""
    from fairseq.search import DiverseBeamSearch

    from helpers import dictionary

    search = DiverseBeamSearch(dictionary(10), num_groups=2, diversity_strength=0.5)
    lprobs = torch.randn(2, 4, 10, generator=torch.Generator().manual_seed(0)).log_softmax(-1)
    scores = torch.zeros(2, 4, 1)
    step_fn(search, 0, lprobs, None, None, ids)
    return step_fn(search, 1, lprobs, scores, None, ids)


@needs("diverse_beam_batch_positions")
def test_unpatched_diverse_beam_search_indexes_rows_with_dataset_ids_and_patched_maps_them():
    ids = torch.tensor([26, 71])  # the batch's sentences' ids in the dataset, as SequenceGenerator passes them
    with pytest.raises(IndexError):
        diverse_beam_steps(compat.original("diverse_beam_batch_positions"), ids)
    patched = diverse_beam_steps(lambda search, *args: search.step(*args), ids)
    expected = diverse_beam_steps(lambda search, *args: search.step(*args), torch.tensor([0, 1]))
    for got, want in zip(patched, expected):  # the same as for a batch whose ids are its rows
        assert torch.equal(got, want)
