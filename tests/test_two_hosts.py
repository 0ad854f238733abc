"""Training across two hosts: two network namespaces made here, each with its own address and linked by a veth
pair, stand for two machines; ``torchrun --nnodes 2`` runs one ``fairseq-train`` across them (gloo, CPU).

It trains one model, equal to one process with ``--update-freq 2`` (as test_launch.py shows for one host: see its
docstring for why the parameters are equal, not merely close); a SIGKILL of one host's launcher makes the other
host's launcher exit (its worker loses its peer) instead of hanging, and the same two commands resume from the
last checkpoint and finish. Needs root and ``ip`` (iproute2); elsewhere it is skipped, saying why. The
namespaces are removed at the end, whatever happens. All traffic stays between the two namespaces.
"""

import os
import shutil
import signal
import subprocess
import time
import uuid

import pytest
import torch

from helpers import BIN, tool_env, tool_path
from test_launch import EPOCHS, TRAIN, assert_same_parameters, free_port, single_process  # noqa: F401
from test_launch import data  # noqa: F401 (the fixtures, shared)

SUBNET = "10.213.77"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def hosts():
    """Two namespaces, ``(name, address, interface)`` each, linked by a veth pair; removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("two network namespaces need root")
    if shutil.which("ip") is None:
        pytest.skip("two network namespaces need iproute2's ip")
    tag = uuid.uuid4().hex[:6]
    made = []
    try:
        names = [f"fb{tag}h{i}" for i in (0, 1)]
        links = [f"fb{tag}v{i}" for i in (0, 1)]
        try:
            _ip("netns", "add", names[0])
        except subprocess.CalledProcessError as error:
            pytest.skip(f"ip netns add failed here: {error.stderr.strip()}")
        made.append(names[0])
        _ip("netns", "add", names[1])
        made.append(names[1])
        _ip("link", "add", links[0], "type", "veth", "peer", "name", links[1])
        result = []
        for i, (name, link) in enumerate(zip(names, links)):
            address = f"{SUBNET}.{i + 1}"
            _ip("link", "set", link, "netns", name)
            _ip("-n", name, "addr", "add", f"{address}/24", "dev", link)
            _ip("-n", name, "link", "set", link, "up")
            _ip("-n", name, "link", "set", "lo", "up")
            result.append((name, address, link))
        yield result
    finally:
        for name in made:  # deleting a namespace deletes the veth end in it, and so the pair
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=30)


def launch(host, rank: int, master: str, port: int, command, log):
    """``torchrun --nnodes 2 --node-rank RANK`` inside namespace ``host``, the rendezvous at ``master``."""
    name, _, link = host
    env = tool_env(GLOO_SOCKET_IFNAME=link)  # gloo's own connections on the veth, not on a default interface
    with open(log, "w") as out:
        proc = subprocess.Popen(["ip", "netns", "exec", name, os.path.join(BIN, "torchrun"), "--nnodes", "2",
                                 "--node-rank", str(rank), "--nproc_per_node", "1", "--master-addr", master,
                                 "--master-port", str(port), tool_path("fairseq-train"), *command],
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    proc.log = log
    return proc


def finish(proc, timeout: float = 300) -> str:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    out = open(proc.log).read()
    assert proc.returncode == 0, out[-4000:]
    return out


def test_two_hosts_train_like_one_process(data, single_process, hosts, tmp_path):  # noqa: F811
    expected, updates, first_epoch = single_process
    master = hosts[0][1]
    save = tmp_path / "ck"
    command = [str(data / "bin"), *TRAIN, "--max-epoch", str(EPOCHS), "--save-dir", str(save)]
    port = free_port()
    nodes = [launch(hosts[rank], rank, master, port, command, tmp_path / f"host{rank}.log") for rank in (0, 1)]
    out = [finish(node) for node in nodes]
    assert "training on 2 devices" in out[0] and "world size 2, from torchrun's environment" in out[0]
    state = torch.load(save / "checkpoint_last.pt", map_location="cpu")
    assert state["optimizer_history"][-1]["num_updates"] == updates
    assert_same_parameters(state["model"], expected, first_epoch)


def test_a_killed_host_stops_the_other_and_both_resume(data, single_process, hosts, tmp_path):  # noqa: F811
    _, updates, _ = single_process
    epochs = 12
    master = hosts[0][1]
    save = tmp_path / "ck"
    command = [str(data / "bin"), *TRAIN, "--max-epoch", str(epochs), "--save-interval-updates", "3",
               "--save-dir", str(save)]
    port = free_port()
    nodes = [launch(hosts[rank], rank, master, port, command, tmp_path / f"run{rank}.log") for rank in (0, 1)]
    last = save / "checkpoint_last.pt"
    deadline = time.time() + 120
    while not last.exists() and all(n.poll() is None for n in nodes) and time.time() < deadline:
        time.sleep(0.01)
    assert all(n.poll() is None for n in nodes), "the run ended before it could be killed"
    os.killpg(nodes[1].pid, signal.SIGKILL)  # host 1: its launcher and its worker, as a machine that dies
    nodes[1].wait()
    try:
        nodes[0].wait(timeout=180)  # host 0 notices its peer is gone and exits, rather than hanging
    finally:
        if nodes[0].poll() is None:
            os.killpg(nodes[0].pid, signal.SIGKILL)
            pytest.fail("host 0 was still running 180 s after host 1 died:\n" + open(nodes[0].log).read()[-3000:])
    assert nodes[0].returncode != 0
    killed_at = torch.load(last, map_location="cpu")["optimizer_history"][-1]["num_updates"]
    assert 0 < killed_at < epochs * updates // EPOCHS

    port = free_port()
    nodes = [launch(hosts[rank], rank, master, port, command, tmp_path / f"resumed{rank}.log") for rank in (0, 1)]
    out = [finish(node) for node in nodes]
    assert "checkpoint_last.pt" in out[0] and "done training" in out[0]
    state = torch.load(last, map_location="cpu")
    assert state["optimizer_history"][-1]["num_updates"] == epochs * updates // EPOCHS
