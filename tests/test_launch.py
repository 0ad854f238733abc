"""Data-parallel training through fairseq's own launcher and trainer: ``torchrun ... fairseq-train`` on CPU.

Two processes (gloo, one thread each) that each see every other batch take the same updates as one process that
sees both batches of every update (``--update-freq 2``): fairseq gives rank r the batches r, r + 2, ... of the
epoch, and a single process with ``--update-freq 2`` groups batches 2k and 2k + 1 into update k. The parameters
are then not merely close but equal: every batch is computed by the same code on the same thread count, and the
all-reduced sum of two gradients is the same two-term float sum the single process accumulates (addition is
commutative); the scaling by the world size is by a power of two. The tolerance (1e-6, against updates of
about the learning rate, 1e-2) only allows for a platform whose reduction rounds differently; a lost or doubled
gradient, or two processes training independently, moves parameters by orders of magnitude more.
"""

import os
import re
import signal
import socket
import subprocess
import time

import pytest
import torch

from helpers import BIN, USER_DIR, corpus, run, tool_env, tool_path

HERE = os.path.dirname(os.path.abspath(__file__))
EPOCHS = 2
#: fairseq-train options of every run here: no dropout (the processes' dropout masks could not match the single
#: process's), a fixed seed, small batches so that an epoch has several updates.
TRAIN = ["--user-dir", USER_DIR, "--arch", "bahdanau_gru_tiny", "--dropout", "0", "--optimizer", "adam",
         "--lr", "0.01", "--max-tokens", "300", "--cpu", "--num-workers", "0", "--seed", "3",
         "--log-format", "simple", "--log-interval", "1", "--data-buffer-size", "0"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, log, env=None, **kwargs) -> subprocess.Popen:
    """Start ``torchrun ARGS`` with its output (the launcher's and its workers') going to the file ``log``."""
    with open(log, "w") as out:
        proc = subprocess.Popen([os.path.join(BIN, "torchrun"), *args], stdout=out, stderr=subprocess.STDOUT,
                                env=env or tool_env(PYTHONPATH=HERE), **kwargs)
    proc.log = log
    return proc


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    proc.wait(timeout=timeout)
    out = open(proc.log).read()
    assert proc.returncode == 0, out[-4000:]
    return out


def assert_same_parameters(actual: dict, expected: dict, earlier: dict) -> None:
    moved = max((expected[n] - earlier[n]).abs().max().item() for n in expected)
    assert moved > 1e-2, "the updates are too small for the comparison to mean anything"
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(actual[name], value, atol=1e-6, rtol=0, msg=lambda m: f"{name}: {m}")


def workers_of(save_dir) -> list:
    """PIDs of the running processes whose command line names ``save_dir``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if str(save_dir).encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return corpus(tmp_path_factory.mktemp("launch"), train=400, valid=60, test=30, seed=2)


@pytest.fixture(scope="module")
def single_process(data):
    """One process, --update-freq 2, EPOCHS epochs: (checkpoint_last parameters, its update count, the
    parameters after the first epoch)."""
    out = run("fairseq-train", str(data / "bin"), *TRAIN, "--update-freq", "2", "--max-epoch", str(EPOCHS),
              "--save-dir", str(data / "single")).stdout
    state = torch.load(data / "single" / "checkpoint_last.pt", map_location="cpu")
    assert "training on 1 devices" in out
    first_epoch = torch.load(data / "single" / "checkpoint1.pt", map_location="cpu")["model"]
    return state["model"], state["optimizer_history"][-1]["num_updates"], first_epoch


def test_torchrun_one_node_trains_like_one_process_with_update_freq(data, single_process):
    """``torchrun --nproc_per_node 2 fairseq-train`` without --distributed-world-size (fairseq alone would run two
    independent world-size-1 trainings into one directory), torch DDP (fairseq's default --ddp-backend)."""
    expected, updates, first_epoch = single_process
    save = data / "one_node"
    out = finish(torchrun("--standalone", "--nproc_per_node", "2", tool_path("fairseq-train"),
                          str(data / "bin"), *TRAIN, "--max-epoch", str(EPOCHS), "--save-dir", str(save),
                          log=data / "one_node.log"))
    assert "training on 2 devices" in out
    assert "world size 2, from torchrun's environment" in out
    state = torch.load(save / "checkpoint_last.pt", map_location="cpu")
    assert state["optimizer_history"][-1]["num_updates"] == updates
    assert_same_parameters(state["model"], expected, first_epoch)
    # one set of files, each save logged once (fairseq saves on rank 0 only; the other rank logs warnings only,
    # so two trainings writing here would show up as a world size of 1 above)
    assert sorted(p.name for p in save.iterdir()) == sorted(
        [f"checkpoint{e}.pt" for e in range(1, EPOCHS + 1)] + ["checkpoint_best.pt", "checkpoint_last.pt"])
    assert len(re.findall(r"Saved checkpoint .*checkpoint\d+\.pt", out)) == EPOCHS


def test_torchrun_two_nodes_legacy_ddp_trains_like_one_process_and_validates_alike(data, single_process, tmp_path):
    """Two launchers, as on two machines (``--nnodes 2 --node-rank R``, a static rendezvous on localhost), with
    fairseq's own ``legacy_ddp`` wrapper; every rank computes the same validation loss."""
    expected, updates, first_epoch = single_process
    save, losses = tmp_path / "ck", tmp_path / "valid"
    losses.mkdir()
    port = str(free_port())
    nodes = [torchrun("--nnodes", "2", "--node-rank", str(rank), "--nproc_per_node", "1", "--master-addr",
                      "127.0.0.1", "--master-port", port, os.path.join(HERE, "fairseq_train_every_rank.py"),
                      str(data / "bin"), *TRAIN, "--ddp-backend", "legacy_ddp", "--max-epoch", str(EPOCHS),
                      "--save-dir", str(save), log=tmp_path / f"node{rank}.log",
                      env=tool_env(PYTHONPATH=HERE, VALID_LOSS_DIR=str(losses)))
             for rank in (0, 1)]
    out = [finish(node) for node in nodes]
    assert "training on 2 devices" in out[0]
    state = torch.load(save / "checkpoint_last.pt", map_location="cpu")
    assert state["optimizer_history"][-1]["num_updates"] == updates
    assert_same_parameters(state["model"], expected, first_epoch)
    per_rank = [(losses / f"rank{r}.txt").read_text().split() for r in (0, 1)]
    assert len(per_rank[0]) == EPOCHS and per_rank[0] == per_rank[1]


def test_torchrun_killed_mid_run_resumes_and_translates(data, single_process, tmp_path):
    """SIGKILL to the launcher alone (its workers, in sessions of their own, must not train on unseen), then the
    same command again."""
    _, updates, _ = single_process
    epochs = 12
    save = tmp_path / "ck"
    command = ["--standalone", "--nproc_per_node", "2", tool_path("fairseq-train"), str(data / "bin"),
               *TRAIN, "--max-epoch", str(epochs), "--save-interval-updates", "3", "--save-dir", str(save)]
    job = torchrun(*command, log=tmp_path / "killed.log")
    last = save / "checkpoint_last.pt"
    deadline = time.time() + 120
    while not last.exists() and job.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert job.poll() is None, "the run ended before it could be killed"
    job.send_signal(signal.SIGKILL)
    job.wait()
    deadline = time.time() + 30
    while workers_of(save) and time.time() < deadline:
        time.sleep(0.05)
    assert not workers_of(save), "torchrun's workers outlived their launcher"
    killed_at = torch.load(last, map_location="cpu")["optimizer_history"][-1]["num_updates"]
    assert 0 < killed_at < epochs * updates // EPOCHS

    out = finish(torchrun(*command, log=tmp_path / "resumed.log"))
    assert re.search(r"[Ll]oaded checkpoint .*checkpoint_last\.pt \(epoch \d+ @ [1-9]\d* updates\)", out), out[-3000:]
    state = torch.load(last, map_location="cpu")
    assert state["optimizer_history"][-1]["num_updates"] == epochs * updates // EPOCHS
    assert state["extra_state"]["train_iterator"]["epoch"] == epochs + 1  # the epoch it would start next
    assert "done training" in out

    generated = run("fairseq-generate", str(data / "bin"), "--user-dir", USER_DIR, "--path", str(last),
                    "--beam", "5", "--cpu", "--batch-size", "16").stdout
    assert len(re.findall(r"^H-\d+\t", generated, flags=re.M)) == 30


def test_fairseq_spawning_processes_on_cpu_stops_and_names_torchrun(data, tmp_path):
    proc = run("fairseq-train", str(data / "bin"), *TRAIN, "--distributed-world-size", "2", "--max-epoch", "1",
               "--save-dir", str(tmp_path / "ck"), check=False)
    assert proc.returncode != 0
    assert "LaunchError" in proc.stderr and "torchrun --nproc_per_node 2" in proc.stderr
    assert not (tmp_path / "ck").exists()
