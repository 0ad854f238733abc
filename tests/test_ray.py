"""The service on Ray Serve (``python -m fairseq_bahdanau.deploy.ray_serve``), on a local Ray cluster of two nodes.

The cluster is made and torn down by ``tests/ray_cluster.py`` (``ray.cluster_utils.Cluster``, one CPU per node, so
the two replicas of one CPU each go one to a node). Ray lives in its own environment: ``RAY_PYTHON`` (default
``.venv-ray/bin/python``, which ``make test-ray`` makes); without it these tests are skipped, unless
``REQUIRE_RAY=1`` (as ``make test-ray`` sets) makes that a failure. Traffic goes to 127.0.0.1 only.
"""

import collections
import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Tuple

import pytest

from helpers import BAD_REQUEST_IDS, BAD_REQUESTS, ROOT, tool_env
from fairseq_bahdanau.deploy.text import load

RAY_PYTHON = os.environ.get("RAY_PYTHON") or os.path.join(ROOT, ".venv-ray", "bin", "python")


def _has_ray() -> bool:
    if not os.path.exists(RAY_PYTHON):
        return False
    check = subprocess.run([RAY_PYTHON, "-c", "import ray.serve, starlette, onnxruntime"], capture_output=True)
    return check.returncode == 0


pytestmark = pytest.mark.skipif(
    not _has_ray() and os.environ.get("REQUIRE_RAY") != "1",
    reason=f"no Python with Ray Serve at RAY_PYTHON={RAY_PYTHON} (make test-ray makes .venv-ray); REQUIRE_RAY=1 "
           "makes this a failure")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: Optional[dict] = None, raw: Optional[bytes] = None,
         timeout: float = 120) -> Tuple[int, Optional[dict], str]:
    """(status, the JSON answer or None, X-Served-By)."""
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(url + "/translate", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.status, json.loads(reply.read()), reply.headers.get("X-Served-By", "")
    except urllib.error.HTTPError as error:
        payload = error.read()
        try:
            answer = json.loads(payload)
        except ValueError:
            answer = None
        return error.code, answer, error.headers.get("X-Served-By", "")
    except (OSError, urllib.error.URLError):
        return 0, None, ""  # the connection itself failed


def health_of_each(url: str, timeout: float = 30) -> Dict[str, Tuple[str, dict]]:
    """pid -> (node, ``/health`` answer) of the replicas that answer (asked a few times: each answer is one
    replica's, by ``X-Served-By: PID@NODE``)."""
    seen: Dict[str, Tuple[str, dict]] = {}
    for _ in range(12):
        try:
            with urllib.request.urlopen(url + "/health", timeout=timeout) as reply:
                if reply.status == 200:
                    pid, node = reply.headers["X-Served-By"].split("@")
                    seen[pid] = (node, json.loads(reply.read()))
        except (OSError, urllib.error.URLError, KeyError, ValueError):
            pass
    return seen


class RayService:
    """A two-node cluster and ``python -m fairseq_bahdanau.deploy.ray_serve --address ... --replicas 2`` on it."""

    def __init__(self, paths: List[str], replicas: int = 2) -> None:
        # the cluster as ray_serve's docstring says to start one: requests spread over both nodes' replicas
        env = tool_env(PYTHONPATH=ROOT, RAY_USAGE_STATS_ENABLED="0", RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING="0")
        self.log = tempfile.TemporaryFile(mode="w+")
        self.cluster = subprocess.Popen([RAY_PYTHON, os.path.join(ROOT, "tests", "ray_cluster.py")],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                        env=env)
        self.address = self.cluster.stdout.readline().strip()
        assert self.address, f"the cluster did not start: {self.output()[-3000:]}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [RAY_PYTHON, "-m", "fairseq_bahdanau.deploy.ray_serve", "--address", self.address, "--port",
             str(self.port), "--replicas", str(replicas), *map(str, paths)],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        deadline = time.time() + 240
        while time.time() < deadline:
            assert self.process.poll() is None, f"the service stopped: {self.output()[-3000:]}"
            if len(self.replicas(timeout=5)) == replicas:
                return
            time.sleep(1)
        raise AssertionError(f"the service did not start within 240 s: {self.output()[-3000:]}")

    def replicas(self, timeout: float = 30) -> Dict[str, str]:
        """pid -> node of the replicas that answer ``/health``."""
        return {pid: node for pid, (node, _) in health_of_each(self.url, timeout).items()}

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
        if self.cluster.poll() is None:
            self.cluster.stdin.close()  # the helper shuts the cluster down
            try:
                self.cluster.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.cluster.kill()


@pytest.fixture(scope="module")
def ray_service(translators):
    service = RayService([translators.attention, translators.encdec])
    yield service
    service.stop()


@pytest.fixture(scope="module")
def sentences(translators) -> List[str]:
    return (translators.raw / "test.src").read_text().splitlines()[:24]


@pytest.fixture(scope="module")
def expected(translators, sentences) -> Dict[str, str]:
    return dict(zip(sentences, load(str(translators.attention))(sentences)))


def load_for(url: str, sentences: List[str], seconds: float, clients: int = 8):
    """``clients`` clients sending 1 to 3 lines at a time for ``seconds``: [(lines, status, reply, served_by)]."""
    answers: List[Tuple[List[str], int, Optional[dict], str]] = []
    deadline = time.time() + seconds

    def client(seed: int) -> None:
        k = seed
        while time.time() < deadline:
            lines = [sentences[(k + j * 7) % len(sentences)] for j in range(1 + k % 3)]
            k += 5
            status, reply, served_by = post(url, {"text": lines})
            answers.append((lines, status, reply, served_by))
            if status != 200:
                time.sleep(0.2)

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return answers


def test_answers_equal_one_at_a_time_translation_from_replicas_on_both_nodes(ray_service, sentences, expected):
    replicas = ray_service.replicas()
    assert len(replicas) == 2 and len(set(replicas.values())) == 2  # one replica on each node
    answers = load_for(ray_service.url, sentences, seconds=10)
    assert answers and all(status == 200 for _, status, _, _ in answers)
    wrong = [lines for lines, _, reply, _ in answers
             if [r["translation"] for r in reply["results"]] != [expected[line] for line in lines]]
    assert not wrong
    nodes = {served_by.split("@")[1] for _, _, _, served_by in answers}
    assert nodes == set(replicas.values())  # requests were served on both nodes


@pytest.mark.parametrize("raw, status, message", BAD_REQUESTS, ids=BAD_REQUEST_IDS)
def test_bad_input_gets_the_single_process_services_answer(ray_service, raw, status, message):
    got, reply, _ = post(ray_service.url, raw=raw)
    assert got == status and reply is not None and message in reply["error"], (got, reply)


def test_bad_input_answers_equal_the_single_process_services(ray_service, translators):
    """Every answer of the table, whole (status and JSON), and GET /models and an unknown path, equal the
    single-process service's (with the same limits: one worker, as each replica has)."""
    from test_service import Server

    server = Server([translators.attention, translators.encdec], "--workers", "1")
    try:
        for raw, _, _ in BAD_REQUESTS:
            single = server.post(None, raw=raw)
            assert post(ray_service.url, raw=raw)[:2] == tuple(single[:2])
        for path in ("/models", "/nope"):
            try:
                with urllib.request.urlopen(ray_service.url + path) as reply:
                    ray_answer = (reply.status, json.loads(reply.read()))
            except urllib.error.HTTPError as error:
                ray_answer = (error.code, json.loads(error.read()))
            assert ray_answer == server.get(path)
    finally:
        server.stop()


def test_a_killed_replica_fails_visibly_never_wrongly_and_comes_back(ray_service, sentences, expected):
    before = ray_service.replicas()
    victim = sorted(before)[0]
    results: List = []
    loader = threading.Thread(target=lambda: results.extend(load_for(ray_service.url, sentences, seconds=20)))
    loader.start()
    time.sleep(5)
    os.kill(int(victim), signal.SIGKILL)
    loader.join()
    wrong = [lines for lines, status, reply, _ in results if status == 200
             and [r["translation"] for r in reply["results"]] != [expected[line] for line in lines]]
    assert not wrong  # no request got a wrong answer
    failed = [(status, reply) for _, status, reply, _ in results if status != 200]
    assert all(status >= 500 for status, _ in failed), failed  # failures are visible: 5xx, never a 2xx or 4xx
    print(f"replica {victim} killed: {len(results) - len(failed)} requests answered, failed by status:",
          dict(collections.Counter(status for status, _ in failed)))
    assert sum(status == 200 for _, status, _, _ in results) > 0
    deadline = time.time() + 120
    while time.time() < deadline:
        now = ray_service.replicas()
        if len(now) == 2 and victim not in now:
            break
        time.sleep(2)
    assert len(now) == 2 and victim not in now, (before, now)  # Ray brought a new replica up
    assert post(ray_service.url, {"text": sentences[:2]})[0] == 200


def test_requests_whose_clients_hang_up_leave_the_replicas(ray_service, sentences):
    """Ray Serve cancels the handler of a client that hangs up: its request leaves the replica's queue then,
    untranslated (it used to wait there for --request-timeout, and a burst of such requests filled the queues)."""
    line = " ".join(sentences)
    while post(ray_service.url, {"text": [line], "beam": 16})[0] == 413:  # the longest line beam 16 may take
        line = line.rsplit(" ", 1)[0]
    body = json.dumps({"text": [line] * 4, "beam": 16, "nbest": 16}).encode()
    request = (b"POST /translate HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body)) + body
    before = {pid: health for pid, (_, health) in health_of_each(ray_service.url).items()}
    for _ in range(20):  # each client sends its request and hangs up
        with socket.create_connection(("127.0.0.1", ray_service.port)) as client:
            client.sendall(request)
            time.sleep(0.05)
    deadline = time.time() + 90
    while time.time() < deadline:
        now = {pid: health for pid, (_, health) in health_of_each(ray_service.url).items()}
        if len(now) == 2 and all(h["waiting"] == 0 for h in now.values()):
            break
        time.sleep(0.5)
    translated = sum(now[pid]["lines"] - before.get(pid, {"lines": 0})["lines"] for pid in now)
    assert all(h["waiting"] == 0 for h in now.values()), now
    assert translated < 20 * 4 / 2, translated  # most of the 80 lines were never translated
    print(f"20 requests of 4 lines abandoned: {translated} lines translated")


def test_sigterm_answers_the_requests_in_flight_then_stops(ray_service, sentences, expected):
    """Last in this module (it stops the service): SIGTERM under load. Every request in flight at that moment is
    answered, correctly (the replicas drain before Ray Serve stops: serve.shutdown() alone killed the proxy
    first); later ones fail visibly; the command exits within --shutdown-timeout and a margin."""
    timed: List[Tuple[float, float, List[str], int, Optional[dict]]] = []
    stop = time.time() + 60

    def client(seed: int) -> None:
        k = seed
        while time.time() < stop:
            lines = [sentences[(k + j * 7) % len(sentences)] for j in range(1 + k % 3)]
            k += 5
            start = time.time()
            status, reply, _ = post(ray_service.url, {"text": lines}, timeout=60)
            timed.append((start, time.time(), lines, status, reply))
            if status != 200:
                time.sleep(0.2)

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(5)
    sent = time.time()
    ray_service.process.send_signal(signal.SIGTERM)
    ray_service.process.wait(timeout=10 + 30)  # --shutdown-timeout (default 10 s) and Ray's own stopping
    stop = 0
    for thread in threads:
        thread.join()
    in_flight = [(lines, status, reply) for start, end, lines, status, reply in timed if start < sent < end]
    assert in_flight
    assert all(status == 200 and [r["translation"] for r in reply["results"]] == [expected[x] for x in lines]
               for lines, status, reply in in_flight), [status for _, status, _ in in_flight]
    later = [status for start, _, _, status, _ in timed if start >= sent]
    assert all(status in (200, 404, 503, 0) for status in later), later  # answered, or Ray's 404, or refused
    print(f"SIGTERM: {len(in_flight)} requests in flight, all answered; after it:", dict(collections.Counter(later)))
