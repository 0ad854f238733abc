"""The translation service (service.py) and the translator's details (serve.py), against a real server.

Each test starts ``python -m fairseq_bahdanau.deploy.serve --port P`` on 127.0.0.1 with the exported attention model and
its fixed-context twin (the ``translators`` fixture), and talks to it over HTTP: the JSON API, word-level attention,
every kind of bad input, concurrent clients (each answer checked against one-at-a-time translation), the queue's
503, SIGTERM's graceful stop, and the page in a real browser (Debian's chromium, through selenium).
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any, List, Optional, Tuple

import pytest

from helpers import BAD_REQUEST_IDS, BAD_REQUESTS, tool_env
from fairseq_bahdanau.deploy.text import Attention, load, word_attention, word_spans


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m fairseq_bahdanau.deploy.serve --port P ...`` in a subprocess, ready when ``/health`` answers."""

    def __init__(self, paths, *options: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile(mode="w+")  # not a pipe: a full pipe would stop the server
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fairseq_bahdanau.deploy.serve", "--port", str(self.port), *map(str, paths),
             *options],
            stdout=self.log, stderr=subprocess.STDOUT, text=True, env=tool_env())
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the server stopped: {self.output()[-3000:]}")
            try:
                if self.get("/health")[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)
        raise AssertionError("the server did not start within 60 s")

    def get(self, path: str, **headers: str) -> Tuple[int, dict]:
        request = urllib.request.Request(self.url + path, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:
                body = reply.read()
                return reply.status, json.loads(body) if path != "/metrics" else body.decode()
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def post(self, body, path: str = "/translate", raw: Optional[bytes] = None, timeout: float = 120,
             **headers: str) -> Tuple[int, dict, Any]:
        data = raw if raw is not None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(self.url + path, data=data,
                                         headers={"Content-Type": "application/json", **headers})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as reply:
                return reply.status, json.loads(reply.read()), reply.headers
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read()), error.headers

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.output()


@pytest.fixture(scope="module")
def server(translators):
    server = Server([translators.attention, translators.encdec])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def sentences(translators) -> List[str]:
    return (translators.raw / "test.src").read_text().splitlines()[:24]


# ---------------------------------------------------------------------------------------------- words


def test_word_spans_and_word_attention_merge_pieces():
    pieces = ["\u2581Ein", "\u2581Mann", "\u2581fähr", "t", "\u2581", "."]
    assert word_spans(pieces, True) == [(0, 1), (1, 2), (2, 4), (4, 6)]
    assert word_spans(pieces, False) == [(i, i + 1) for i in range(6)]
    target = ["\u2581A", "\u2581man", "\u2581ride", "s"]
    weights = [[0.5, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05],
               [0.1, 0.6, 0.1, 0.1, 0.0, 0.0, 0.1],
               [0.0, 0.0, 0.4, 0.4, 0.0, 0.0, 0.2],
               [0.0, 0.0, 0.2, 0.6, 0.0, 0.0, 0.2]]
    words = word_attention(Attention(pieces + ["</s>"], target, weights), True)
    assert words.source == ["Ein", "Mann", "fährt", ".", "</s>"] and words.target == ["A", "man", "rides"]
    # summed over a source word's pieces, averaged over a target word's pieces
    assert words.weights[2] == pytest.approx([0.0, 0.0, (0.8 + 0.8) / 2, 0.0, 0.2])
    assert words.weights[0] == pytest.approx([0.5, 0.1, 0.2, 0.15, 0.05])
    assert all(sum(row) == pytest.approx(1.0) for row in words.weights)


def test_details_give_nbest_scores_and_attention_of_the_best(translators, sentences):
    translator = load(str(translators.attention))
    plain = translator(sentences[:4])
    details = translator.details(sentences[:4] + ["", "   "], beam=5, nbest=3)
    assert [d.text for d in details[:4]] == plain  # the best hypothesis is the filter's translation
    for line, d in zip(sentences, details[:4]):
        assert len(d.nbest) == 3 and d.nbest[0].text == d.text
        assert [h.score for h in d.nbest] == sorted((h.score for h in d.nbest), reverse=True)
        assert d.pieces.source[:-1] == translator.pieces(line) and d.pieces.source[-1] == "</s>"
        assert len(d.pieces.weights) == len(d.pieces.target) and len(d.words.weights) == len(d.words.target)
        assert " ".join(d.words.target) == d.text
        assert all(sum(row) == pytest.approx(1.0, abs=1e-4) for row in d.words.weights)
    assert [(d.text, d.nbest, d.words) for d in details[4:]] == [("", [], None)] * 2  # nothing invented
    encdec = load(str(translators.encdec)).details(sentences[:2], beam=2, nbest=2)
    assert all(d.words is None and d.pieces is None and len(d.nbest) == 2 for d in encdec)


def test_the_filter_keeps_going_past_a_line_that_is_too_long(translators, sentences):
    lines = [sentences[0], "w " * 1100, "", sentences[1]]
    proc = subprocess.run([sys.executable, "-m", "fairseq_bahdanau.deploy.serve", str(translators.attention)],
                          input="".join(line + "\n" for line in lines), capture_output=True, text=True,
                          env=tool_env())
    translator = load(str(translators.attention))
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [translator([sentences[0]])[0], "", "", translator([sentences[1]])[0]]
    assert "line 2 not translated" in proc.stderr and "1024 source positions" in proc.stderr


def test_batcher_joins_requests_of_one_key_keeps_the_others_in_order_and_bounds_the_queue():
    """The worker blocked on a first request: at most max_queue requests wait (one more: QueueFull); then the
    oldest waiting request goes first, with the later ones of its key that fit beside it."""
    import asyncio

    from fairseq_bahdanau.deploy.serve import Translation
    from fairseq_bahdanau.deploy.service import Batcher, Limits

    release, calls = threading.Event(), []

    class Fake:
        def details(self, lines, beam, nbest, stop=None):
            release.wait(10)
            calls.append((beam, list(lines)))
            return [Translation(line.upper(), [], None, None) for line in lines]

    async def scenario():
        batcher = Batcher({"m": Fake()}, Limits(max_queue=3, max_batch_lines=4))
        batcher.start()
        first = batcher.submit(("m", 1, 1), ["a"])
        await asyncio.sleep(0.05)  # the worker has taken it and waits in Fake.details
        waiting = [batcher.submit(("m", 2, 1), ["b"]), batcher.submit(("m", 1, 1), ["c", "d"]),
                   batcher.submit(("m", 1, 1), ["e"])]
        with pytest.raises(asyncio.QueueFull):
            batcher.submit(("m", 1, 1), ["f"])
        release.set()
        results = [await future for future in [first, *waiting]]
        await batcher.stop()
        return results

    results = asyncio.run(scenario())
    assert calls == [(1, ["a"]), (2, ["b"]), (1, ["c", "d", "e"])]
    assert [[t.text for t in r] for r in results] == [["A"], ["B"], ["C", "D"], ["E"]]


# ---------------------------------------------------------------------------------------------- the API


def test_api_translates_with_nbest_and_word_attention(server, translators, sentences):
    status, models = server.get("/models")
    assert status == 200 and [m["name"] for m in models["models"]] == ["attention", "encdec"]
    assert [m["attention"] for m in models["models"]] == [True, False]
    status, reply, _ = server.post({"text": sentences[:3] + [""], "beam": 4, "nbest": 2})
    assert status == 200 and reply["model"] == "attention" and (reply["beam"], reply["nbest"]) == (4, 2)
    expected = load(str(translators.attention)).details(sentences[:3], beam=4, nbest=2)
    for result, want in zip(reply["results"], expected):
        assert result["translation"] == want.text
        assert [h["text"] for h in result["nbest"]] == [h.text for h in want.nbest]
        assert result["attention"]["target"] == want.words.target
        assert len(result["attention"]["weights"][0]) == len(result["attention"]["source"])
        assert result["pieces"]["source"] == want.pieces.source
    assert reply["results"][3] == {"translation": "", "nbest": [], "attention": None, "pieces": None}
    status, reply, _ = server.post({"text": sentences[:1], "model": "encdec"})
    assert status == 200 and reply["results"][0]["attention"] is None and reply["results"][0]["translation"]


def test_a_line_that_is_too_long_gets_its_own_error_and_the_others_are_translated(server, sentences):
    status, reply, _ = server.post({"text": [sentences[0], "w " * 1100, sentences[1]]})
    assert status == 200
    first, bad, last = reply["results"]
    assert "1024 source positions" in bad["error"] and first["translation"] and last["translation"]


@pytest.mark.parametrize("raw, status, message", BAD_REQUESTS, ids=BAD_REQUEST_IDS)
def test_bad_requests_get_a_clear_4xx_and_the_server_keeps_serving(server, sentences, raw, status, message):
    got, reply, _ = server.post(None, raw=raw)
    assert got == status and message in reply["error"]
    assert server.post({"text": sentences[:1]})[0] == 200


def test_concurrent_clients_each_get_exactly_their_own_answers(server, translators, sentences):
    """16 clients for a bounded time, each sending 1 to 3 lines at a time (its own mix), on 127.0.0.1: every
    answer equals one-at-a-time translation of exactly its request's lines, in order; none lost or mixed."""
    expected = dict(zip(sentences, load(str(translators.attention))(sentences)))
    answered, wrong, errors = [], [], []
    deadline = time.time() + 8

    def client(seed: int) -> None:
        k = seed
        while time.time() < deadline:
            lines = [sentences[(k + j * 7) % len(sentences)] for j in range(1 + k % 3)]
            k += 5
            status, reply, _ = server.post({"text": lines})
            if status != 200:
                errors.append((status, reply))
                continue
            got = [r["translation"] for r in reply["results"]]
            (answered if got == [expected[line] for line in lines] else wrong).append(lines)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(client, range(16)))
    assert not errors and not wrong
    assert len(answered) >= 32  # every client was answered, several times


def test_a_full_queue_answers_503_with_retry_after(translators, sentences):
    server = Server([translators.attention], "--max-queue", "1", "--max-batch-lines", "8", "--max-work", "100000")
    try:
        body = {"text": sentences[:24] + sentences[:24] + sentences[:16], "beam": 16, "nbest": 1}
        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda _: server.post(body), range(8)))
        busy = [r for r in replies if r[0] == 503]
        assert busy and all(r[2].get("Retry-After") == "1" and "busy" in r[1]["error"] for r in busy)
        assert all(r[0] in (200, 503) for r in replies)
        assert server.post({"text": sentences[:1]})[0] == 200  # and it serves on
    finally:
        server.stop()


def test_sigterm_finishes_requests_in_flight_and_stops(translators, sentences):
    server = Server([translators.attention], "--max-work", "100000")
    reply: List = []
    worker = threading.Thread(target=lambda: reply.append(
        server.post({"text": sentences[:24] * 2 + sentences[:16], "beam": 16})))
    worker.start()
    time.sleep(0.5)  # the request is in
    server.process.send_signal(signal.SIGTERM)
    worker.join(timeout=120)
    assert reply and reply[0][0] == 200 and len(reply[0][1]["results"]) == 64
    # uvicorn re-raises the signal once it has shut down gracefully, so the exit status is SIGTERM's
    assert server.process.wait(timeout=30) in (0, -signal.SIGTERM)
    with pytest.raises(OSError):
        server.get("/health")  # no longer listening
    log = server.stop()
    assert "Waiting for application shutdown" in log and "Application shutdown complete" in log


# ---------------------------------------------------------------------------------------------- the page


CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,900", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def translate_on_page(driver, url: str, text: str):
    """Open the page at ``url``, type ``text`` and press Translate; returns the driver's 60-second wait."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url + "/")
    wait = WebDriverWait(driver, 60)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "input.model")) == 2)
    box = driver.find_element(By.ID, "text")
    box.clear()
    box.send_keys(text)
    driver.find_element(By.ID, "translate").click()
    return wait


NEEDS_BROWSER = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER) and os.environ.get("REQUIRE_BROWSER") != "1",
    reason="Debian's chromium and chromium-driver are not installed (make test installs them as root: "
           "tests/install_browser.sh); REQUIRE_BROWSER=1 makes this a failure")


@NEEDS_BROWSER
def test_the_page_in_a_real_browser(server, sentences, tmp_path):
    """Chromium loads the page, a sentence is typed and translated: the attention model's panel shows its
    translation and a heatmap with one row per target word and one column per source word (and </s>), the
    fixed-context model's panel says it has no attention; a screenshot is written."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions

    driver = browser(tmp_path)
    try:
        wait = translate_on_page(driver, server.url, sentences[2])
        wait.until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, ".panel[data-model=encdec]")))
        _, reply, _ = server.post({"text": [sentences[2]], "beam": 5, "nbest": 3})
        words = reply["results"][0]["attention"]
        panel = driver.find_element(By.CSS_SELECTOR, ".panel[data-model=attention]")
        assert panel.find_element(By.CSS_SELECTOR, ".translation").text == reply["results"][0]["translation"]
        rows = panel.find_elements(By.CSS_SELECTOR, "table.heatmap tbody tr")
        assert len(rows) == len(words["target"])
        assert all(len(row.find_elements(By.CSS_SELECTOR, "td.cell")) == len(words["source"]) for row in rows)
        assert len(panel.find_elements(By.CSS_SELECTOR, "ol.nbest li")) == 3
        other = driver.find_element(By.CSS_SELECTOR, ".panel[data-model=encdec]")
        assert other.find_elements(By.CSS_SELECTOR, ".no-attention") and not other.find_elements(By.TAG_NAME, "table")
        assert driver.save_screenshot(str(tmp_path / "page.png"))
        print("screenshot:", tmp_path / "page.png")
    finally:
        driver.quit()


# ---------------------------------------------------------------------------------------------- hostile use


def test_errors_outside_translate_are_json_and_a_body_must_be_declared_json(server, sentences):
    assert server.get("/nope") == (404, {"error": "no such endpoint: /nope (see GET /models, POST /translate)"})
    status, reply = server.get("/translate")
    assert status == 405 and "GET is not allowed on /translate" in reply["error"]
    status, reply, _ = server.post({"text": sentences[:1]}, **{"Content-Type": "text/plain"})
    assert status == 415 and "application/json" in reply["error"]


def test_a_lone_surrogate_costs_only_its_own_line(server, sentences):
    status, reply, _ = server.post({"text": ["\ud800", sentences[0], "a\udfffb"]})
    assert status == 200
    bad, good, worse = reply["results"]
    assert "not valid Unicode" in bad["error"] and "not valid Unicode" in worse["error"] and good["translation"]
    assert "\\ud800" not in server.output() and sentences[0] not in server.output()  # nobody's text in the log


def test_the_filter_keeps_going_past_a_line_that_is_not_utf8(translators, sentences):
    lines = [sentences[0].encode(), b"\xff\xfe broken", sentences[1].encode()]
    proc = subprocess.run([sys.executable, "-m", "fairseq_bahdanau.deploy.serve", str(translators.attention)],
                          input=b"".join(line + b"\n" for line in lines), capture_output=True, env=tool_env())
    translator = load(str(translators.attention))
    assert proc.returncode == 1
    assert proc.stdout.decode().splitlines() == [translator([sentences[0]])[0], "", translator([sentences[1]])[0]]
    assert "line 2 not translated: the line is not UTF-8 text" in proc.stderr.decode()


def test_a_heavy_request_is_bounded_in_time_and_dropped_when_its_client_goes(translators, sentences):
    """One worker: a heavy request whose client hangs up stops at its next decoder step, and one that outlives
    --request-timeout gets 503; a light request behind either is answered within seconds, not minutes."""
    server = Server([translators.attention], "--request-timeout", "3", "--max-work", "10000000",
                    "--max-line-work", "10000000", "--max-lines", "400")
    heavy = {"text": [" ".join(sentences[:10])] * 300, "beam": 16}
    try:
        with pytest.raises(OSError):  # the client hangs up after 0.5 s
            server.post(heavy, timeout=0.5)
        start = time.time()
        status, _, _ = server.post({"text": sentences[:1]})
        assert status == 200 and time.time() - start < 5
        start = time.time()
        status, reply, headers = server.post(heavy)
        assert status == 503 and "longer than 3 s" in reply["error"] and headers.get("Retry-After") == "1"
        assert time.time() - start < 6
        start = time.time()
        assert server.post({"text": sentences[:1]})[0] == 200 and time.time() - start < 5
    finally:
        server.stop()


def test_sigterm_is_bounded_by_the_shutdown_timeout(translators, sentences):
    server = Server([translators.attention], "--shutdown-timeout", "2", "--max-work", "10000000",
                    "--max-line-work", "10000000", "--max-lines", "400")
    reply: List = []
    worker = threading.Thread(target=lambda: reply.append(
        server.post({"text": [" ".join(sentences[:10])] * 300, "beam": 16})))
    worker.start()
    time.sleep(1.0)  # the request is being translated
    start = time.time()
    server.process.send_signal(signal.SIGTERM)
    worker.join(timeout=30)
    assert reply and reply[0][0] == 503 and "shutting down" in reply[0][1]["error"]
    assert reply[0][2].get("Connection") == "close"
    assert server.process.wait(timeout=30) in (0, -signal.SIGTERM) and time.time() - start < 8
    server.stop()


def test_an_api_key_guards_everything_but_health_and_the_page(translators, sentences, tmp_path):
    key = "k3y-" + "x" * 28
    (tmp_path / "key").write_text(key + "\n")
    server = Server([translators.attention], "--api-key-file", str(tmp_path / "key"))
    try:
        assert server.get("/health")[0] == 200
        status, reply, headers = server.post({"text": sentences[:1]})
        assert status == 401 and "Authorization: Bearer" in reply["error"] and headers["WWW-Authenticate"] == "Bearer"
        assert server.post({"text": sentences[:1]}, Authorization="Bearer wrong")[0] == 401
        assert server.get("/models")[0] == 401 and server.get("/metrics")[0] == 401
        status, reply, _ = server.post({"text": sentences[:1]}, Authorization=f"Bearer {key}")
        assert status == 200 and reply["results"][0]["translation"]
        status, text = server.get("/metrics", Authorization=f"Bearer {key}")
        assert status == 200 and 'translation_requests_total{path="/translate",status="200"} 1.0' in text
        assert 'status="401"' in text and "translation_lines_total 1.0" in text
        assert "translation_batch_lines_bucket" in text and "translation_queue_requests 0.0" in text
        with urllib.request.urlopen(server.url + "/", timeout=30) as page:
            assert page.status == 200
    finally:
        server.stop()


def test_half_sent_headers_are_dropped_after_the_header_timeout(translators, sentences):
    server = Server([translators.attention], "--header-timeout", "2")
    try:
        start = time.time()
        with socket.create_connection(("127.0.0.1", server.port), timeout=20) as slow:
            slow.sendall(b"POST /translate HTTP/1.1\r\nHost: x\r\n")  # and never the rest
            assert slow.recv(1024) == b""  # closed by the server
        assert 1.5 < time.time() - start < 10
        assert server.post({"text": sentences[:1]})[0] == 200
    finally:
        server.stop()


def test_a_batch_holds_at_most_max_work_and_a_stalled_body_gets_408(translators, sentences, tmp_path):
    """Requests of one key join a batch only while their work together stays within --max-work; a body that stalls
    is answered 408 after --header-timeout; options may come before the translators; an empty request is answered
    at once."""
    import asyncio

    from fairseq_bahdanau.deploy.serve import Translation
    from fairseq_bahdanau.deploy.service import Batcher, Limits

    release, calls = threading.Event(), []

    class Fake:
        def details(self, lines, beam, nbest, stop=None):
            release.wait(10)
            calls.append(list(lines))
            return [Translation(line, [], None, None) for line in lines]

    async def scenario():
        batcher = Batcher({"m": Fake()}, Limits(max_work=100))
        batcher.start()
        first = batcher.submit(("m", 1, 1), ["a"], costs=[10])
        await asyncio.sleep(0.05)  # the worker waits in Fake.details
        rest = [batcher.submit(("m", 1, 1), [x], costs=[60]) for x in "bcd"]
        release.set()
        await asyncio.gather(first, *rest)
        await batcher.stop()

    asyncio.run(scenario())
    assert calls == [["a"], ["b"], ["c"], ["d"]]  # 60 + 60 > 100: one at a time

    async def heavy_first():
        """A request over --slice-work goes a slice at a time, and the light requests behind it get their turn
        between its slices: they wait for one slice, not for the whole of it. Heavy requests go oldest first, not
        round-robin (an attacker's review: several heavy requests advancing together all failed together at the
        deadline or at shutdown)."""
        release.clear()
        calls.clear()
        batcher = Batcher({"m": Fake()}, Limits(slice_work=100))
        batcher.start()
        heavy = batcher.submit(("m", 5, 1), ["h1", "h2", "h3", "h4"], costs=[50, 40, 60, 10])
        await asyncio.sleep(0.05)  # the worker waits in Fake.details, in the heavy request's first slice
        light = [batcher.submit(("m", 1, 1), [x], costs=[10]) for x in "xy"]
        other_heavy = batcher.submit(("m", 1, 1), ["o1", "o2"], costs=[60, 60])
        release.set()
        answers = await asyncio.gather(heavy, *light, other_heavy)
        await batcher.stop()
        return answers

    answers = asyncio.run(heavy_first())
    # h1 + h2 = 90 fit in one slice; x and y join (light, one key; o is heavy, not a joiner); then the rest of h
    # (70, under the slice) before the other heavy request o begins, whose two lines are a slice each
    assert calls == [["h1", "h2"], ["x", "y"], ["h3", "h4"], ["o1"], ["o2"]]
    assert [[t.text for t in answer] for answer in answers] == [["h1", "h2", "h3", "h4"], ["x"], ["y"],
                                                                       ["o1", "o2"]]

    key = tmp_path / "key"
    key.write_text("k" * 32)
    server = Server(["--header-timeout", "2", "--api-key-file", str(key), translators.attention])
    try:
        start = time.time()
        with socket.create_connection(("127.0.0.1", server.port), timeout=20) as slow:
            slow.sendall(b"POST /translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Authorization: Bearer " + b"k" * 32 + b"\r\nContent-Length: 1000\r\n\r\n{\"text\"")
            answer = b""
            while True:  # to the end: the head and the body may come in two segments (the server then closes)
                chunk = slow.recv(4096)
                if not chunk:
                    break
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 2 s" in answer
        assert time.time() - start < 10
        status, reply, _ = server.post({"text": []}, Authorization="Bearer " + "k" * 32)
        assert status == 200 and reply["results"] == []
    finally:
        server.stop()


def test_a_cancelled_handler_takes_its_request_out_of_the_queue():
    """Ray Serve cancels the handler of a client that hung up (the single-process server's watcher sees the
    hang-up instead): its request must leave the queue then, not wait there for a worker until --request-timeout
    while the clients behind it get 503."""
    import asyncio
    import json
    import types

    from starlette.requests import Request

    from fairseq_bahdanau.deploy.serve import Translation
    from fairseq_bahdanau.deploy.service import Batcher, Limits, Service, translate

    release, calls = threading.Event(), []

    class Fake:
        default_beam, max_source_positions = 1, 100

        def pieces_or_none(self, line):
            return line.split()

        def details(self, lines, beam, nbest, stop=None):
            release.wait(10)
            calls.append(list(lines))
            return [Translation(line.upper(), [], None, None) for line in lines]

    async def scenario():
        service = Service({"m": Fake()}, Limits())
        service.batcher = Batcher(service.translators, service.limits)
        service.batcher.start()
        first = service.batcher.submit(("m", 1, 1), ["a"])
        await asyncio.sleep(0.05)  # the worker has taken it and waits in Fake.details
        messages = [{"type": "http.request", "body": json.dumps({"text": ["b c"]}).encode(), "more_body": False}]

        async def receive():  # the body, then nothing: no disconnect message, as under Ray Serve
            if messages:
                return messages.pop()
            await asyncio.Event().wait()

        scope = {"type": "http", "method": "POST", "path": "/translate", "query_string": b"",
                 "headers": [(b"content-type", b"application/json")],
                 "app": types.SimpleNamespace(state=types.SimpleNamespace(service=service))}
        handler = asyncio.ensure_future(translate(Request(scope, receive)))
        while not service.batcher.waiting:
            await asyncio.sleep(0.01)
        job = service.batcher.waiting[0]
        handler.cancel()
        with pytest.raises(asyncio.CancelledError):
            await handler
        dropped = job.future.cancelled()
        release.set()
        await first
        await asyncio.sleep(0.2)  # a worker would take the request now if it were still wanted
        await service.batcher.stop()
        return dropped

    assert asyncio.run(scenario())
    assert calls == [["a"]]


def test_health_answers_503_when_a_worker_is_dead():
    import asyncio
    import types

    from fairseq_bahdanau.deploy.service import Batcher, Limits, Service, health

    async def scenario():
        service = Service({}, Limits())
        service.batcher = Batcher({}, Limits())
        request = types.SimpleNamespace(app=types.SimpleNamespace(state=types.SimpleNamespace(service=service)),
                                        headers={})
        service.batcher.start()
        alive = await health(request)
        service.batcher.tasks[0].cancel()
        await asyncio.sleep(0)
        dead = await health(request)
        await service.batcher.stop()
        return alive, dead

    alive, dead = asyncio.run(scenario())
    assert alive.status_code == 200 and dead.status_code == 503 and b'"status":"down"' in dead.body


@NEEDS_BROWSER
def test_the_page_keeps_a_long_sentence_in_its_panel_and_says_what_went_wrong(translators, sentences, tmp_path):
    """A 49-word sentence: each heatmap stays inside its own panel (it scrolls); no model ticked: the page says so;
    the service stopped: each panel shows the error and the status says how many failed (no endless
    "translating...")."""
    from selenium.webdriver.common.by import By

    long = " ".join((" ".join(sentences)).split()[:49])
    server = Server([translators.attention, translators.encdec])
    driver = browser(tmp_path)
    try:
        wait = translate_on_page(driver, server.url, long)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".panel[data-model=attention] table.heatmap"))
        inside = driver.execute_script("""
            const panel = document.querySelector('.panel[data-model=attention]').getBoundingClientRect();
            const scroll = document.querySelector('.panel[data-model=attention] .scroll').getBoundingClientRect();
            const other = document.querySelector('.panel[data-model=encdec]').getBoundingClientRect();
            const table = document.querySelector('.panel[data-model=attention] table').getBoundingClientRect();
            return [scroll.right <= panel.right + 1, table.width > scroll.width,
                    !(scroll.right > other.left && scroll.left < other.right && scroll.top < other.bottom &&
                      scroll.bottom > other.top)];""")
        assert inside == [True, True, True], inside
        for model in driver.find_elements(By.CSS_SELECTOR, "input.model"):
            model.click()  # untick both
        driver.find_element(By.ID, "translate").click()
        assert driver.find_element(By.ID, "status").text == "choose at least one model"
        driver.find_elements(By.CSS_SELECTOR, "input.model")[0].click()
        server.stop()
        driver.find_element(By.ID, "translate").click()
        wait.until(lambda d: "could not translate" in d.find_element(By.ID, "status").text)
        error = driver.find_element(By.CSS_SELECTOR, ".panel[data-model=attention] .error").text
        assert "does not answer" in error
    finally:
        driver.quit()
        server.stop()
