"""The translation service: exported translators behind HTTP, with a page that shows what attention does.

    python -m fairseq_bahdanau.deploy.serve --port 8000 attention.onnx [encdec.onnx ...]   (pip install .[serve])

Endpoints (JSON in and out; every error, 404 and 405 included, is a JSON object ``{"error": MESSAGE}``):

``POST /translate``  ``{"text": [lines], "model": NAME, "beam": K, "nbest": N}`` with ``Content-Type:
    application/json`` (``model``: default the first loaded; ``beam``: default the translator's own, 1 to
    ``--max-beam``; ``nbest``: default 1, 1 to ``beam``) -> ``{"model": NAME, "beam": K, "nbest": N, "results":
    [one per line]}``, each result either ``{"translation", "nbest": [{"text", "score"}], "attention": {"source",
    "target", "weights"} or null, "pieces": the same over sentencepiece pieces or null}`` or ``{"error": MESSAGE}``
    for a line that cannot be translated (the others are). ``weights[t][s]``: what target word ``t`` gave source
    word ``s``; word weights are piece weights summed over a source word's pieces and averaged over a target
    word's pieces (rows sum to 1; the last column is the source's end of sentence). Models without attention
    (``--attention-type none``) answer ``"attention": null`` and say so in ``GET /models``. An empty or blank line
    translates to ``""``.
``GET /models``  the loaded translators, with their options and the limits.
``GET /health``  ``{"status": "ok", ...}`` with the requests waiting and the batches and lines translated so far;
    503 with ``"status": "down"`` when a worker has died. Never needs the API key.
``GET /metrics``  Prometheus's text format (``prometheus_client``): requests by status, latency, batch sizes,
    queue length, lines translated.
``GET /``  the page.

Bad input: invalid JSON (nesting and numbers included) or a body that is not UTF-8 (400), no API key or a wrong
one (401, with ``--api-key-file``), a body over ``--max-body-bytes``, more lines than ``--max-lines`` or more work
than ``--max-work`` (source pieces with their ends of sentence, times the beam) or one line of more than
``--max-line-work`` (413), a body that is not declared
``application/json`` (415: a web page cannot make a browser send one without asking first), an unknown model
(404), a ``model`` that is not a non-empty string, a ``beam`` or ``nbest`` out of range or a ``text`` that is not a
list of strings (422). A line that is not valid Unicode (a lone surrogate) or too long gets an error of its own.

Work: requests that arrive together are translated together, per model, beam and n-best, up to
``--max-batch-lines`` lines, by ``--workers`` worker threads (default one per core) that share the translators; at
most ``--max-queue`` requests wait, and one more gets 503 with ``Retry-After``. A request of more than
``--slice-work`` work is translated a slice of that size at a time (a line is never split, and costs at most
``--max-line-work``); heavy requests go oldest first, taking turns with the light ones, so a heavy request delays
the others by one slice, not by all its work. A request not answered within
``--request-timeout``
seconds gets 503, and its translation stops at the next decoder step once no request waits for it any more (a
client that hangs up counts as gone). SIGTERM (or Ctrl-C) stops taking connections, finishes the requests in flight
for up to ``--shutdown-timeout`` seconds and answers the rest 503. At most ``--max-connections`` connections are
served at once (more get 503), a connection that takes more than ``--header-timeout`` seconds to send a request's
headers, or then its body, is closed (408 for the body), and idle kept-alive connections close after 5 seconds.
"""

import argparse
import asyncio
import collections
import concurrent.futures
import hmac
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, List, Optional, Tuple

from .search import Cancelled
from .text import LoadedTranslator, Translation, load

logger = logging.getLogger(__name__)

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")


@dataclass
class Limits:
    max_lines: int = 64  # lines in one request
    max_body_bytes: int = 1 << 20  # 1 MiB
    max_beam: int = 16
    max_work: int = 8192  # source pieces (with their ends of sentence) x beam, in one request and in one batch
    max_queue: int = 64  # requests waiting for a worker
    max_batch_lines: int = 64  # lines translated together
    slice_work: int = 256  # a heavier request is translated in slices of this much work, light ones between
    max_line_work: int = 2048  # one line's work: a line is never sliced, so this bounds what one slice can take
    workers: int = 1  # batches translated at once, each in its own thread (the translators are shared); the
    # command line's default is one per core
    request_timeout: int = 60  # seconds a request may wait and be translated
    shutdown_timeout: int = 10  # seconds SIGTERM waits for the requests in flight
    header_timeout: int = 10  # seconds a connection may take to send a request's headers
    max_connections: int = 256
    retry_after: int = 1  # seconds, in 503 answers


def too_late(limits: Limits) -> str:
    """The answer to a request that outlived ``--request-timeout``."""
    return (f"the translation took longer than {limits.request_timeout} s: send fewer or shorter lines, or a "
            "smaller beam")


class BadRequest(Exception):
    """A request the service refuses: its HTTP status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Unavailable(Exception):
    """A request that was accepted but cannot be answered now (its time ran out, or the service is stopping)."""


@dataclass
class Job:
    """One request's lines, waiting for a worker; a request heavier than ``slice_work`` is translated a slice at a
    time, and goes back to the queue after each (see ``Batcher``)."""

    key: Tuple[str, int, int]  # model, beam, nbest
    lines: List[str]
    future: "asyncio.Future[List[Translation]]" = field(repr=False)
    deadline: float = float("inf")  # time.monotonic() after which nobody waits for it
    costs: List[int] = field(default_factory=list)  # each line's work: its source pieces with </s>, x beam
    started: bool = False  # taken into a batch
    done: List[Translation] = field(default_factory=list)  # the translations of lines[:len(done)]

    def wanted(self) -> bool:
        """Whether somebody still waits for the answer."""
        return not self.future.done() and time.monotonic() < self.deadline

    @property
    def work(self) -> int:
        """The work still to do."""
        return sum(self.costs[len(self.done):])


@dataclass
class Part:
    """Lines ``start`` to ``end`` of a job, in a batch."""

    job: Job
    start: int
    end: int


class Batcher:
    """Translates the lines of requests that arrive together in one batch per (model, beam, nbest), in
    ``workers`` threads (ONNX Runtime's sessions are shared by them). At most ``max_queue`` requests wait; a
    request whose key differs from the batch being formed keeps its place for a later batch; a request nobody
    waits for any more is dropped, and a batch that nobody waits for stops at its next decoder step. A request of
    more than ``slice_work`` work ("heavy") is translated alone, ``slice_work`` at a time (at least one line); heavy
    requests go oldest first, and while light ones wait, a light batch and a heavy slice take turns: a light request
    waits for at most one slice, not for a whole heavy request, and heavy requests finish one after another (under
    a deadline or at shutdown the oldest finish, rather than all advancing together and all failing)."""

    def __init__(self, translators: Dict[str, LoadedTranslator], limits: Limits, metrics: Optional["Metrics"] = None):
        self.translators = translators
        self.limits = limits
        self.metrics = metrics
        self.waiting: Deque[Job] = collections.deque()
        self.arrived = asyncio.Event()
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, limits.workers),
                                                              thread_name_prefix="translate")
        self.tasks: List["asyncio.Task[None]"] = []
        self.stopping = threading.Event()
        self.heavy_turn = False  # whether a heavy slice goes next when light requests wait too
        self.batches = 0  # batches translated so far (GET /health)
        self.lines = 0  # lines translated so far

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self._work()) for _ in range(max(1, self.limits.workers))]

    @property
    def alive(self) -> bool:
        """Whether every worker runs (a worker that raised is dead)."""
        return bool(self.tasks) and not any(task.done() for task in self.tasks)

    async def stop(self) -> None:
        """Answer every waiting request 503, stop the batches in flight at their next step, stop the workers."""
        self.stopping.set()
        while self.waiting:
            job = self.waiting.popleft()
            if not job.future.done():
                job.future.set_exception(Unavailable("the service is shutting down"))
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=True)

    def submit(self, key: Tuple[str, int, int], lines: List[str], deadline: float = float("inf"),
               costs: Optional[List[int]] = None) -> "asyncio.Future[List[Translation]]":
        """Queue a request's lines; raises ``asyncio.QueueFull`` when ``max_queue`` requests already wait."""
        return self.submit_job(key, lines, deadline, costs).future

    def submit_job(self, key: Tuple[str, int, int], lines: List[str], deadline: float = float("inf"),
                   costs: Optional[List[int]] = None) -> Job:
        """``submit``, returning the queued job. ``costs``: each line's work (default 0)."""
        self.waiting = collections.deque(job for job in self.waiting if job.wanted())
        if len(self.waiting) >= self.limits.max_queue:
            raise asyncio.QueueFull
        job = Job(key, lines, asyncio.get_running_loop().create_future(), deadline,
                  list(costs) if costs is not None else [0] * len(lines))
        self.waiting.append(job)
        self.arrived.set()
        return job

    def _heavy(self, job: Job) -> bool:
        """Whether ``job`` is translated in slices: heavier than ``slice_work``, or already begun in slices."""
        return bool(job.done) or job.work > self.limits.slice_work

    def _next_batch(self) -> List[Part]:
        """Taken out of the queue (requests nobody waits for are dropped): the next slice of the oldest heavy
        request (at least one line, at most ``slice_work`` work), or the oldest light request with the later light
        ones of its key that fit beside it (at most ``max_batch_lines`` lines and ``max_work`` work together); the
        two kinds take turns while both wait. The others keep their places."""
        self.waiting = collections.deque(job for job in self.waiting if job.wanted())
        heavy = next((job for job in self.waiting if self._heavy(job)), None)
        light = next((job for job in self.waiting if not self._heavy(job)), None)
        if heavy is None and light is None:
            return []
        if heavy is not None and (light is None or self.heavy_turn):
            self.heavy_turn = False
            self.waiting.remove(heavy)
            heavy.started = True
            start = end = len(heavy.done)
            work = 0
            while end < len(heavy.lines) and (end == start or work + heavy.costs[end] <= self.limits.slice_work):
                work += heavy.costs[end]
                end += 1
            return [Part(heavy, start, min(end, start + self.limits.max_batch_lines))]
        assert light is not None
        self.heavy_turn = True
        self.waiting.remove(light)
        light.started = True
        batch, size, work = [Part(light, 0, len(light.lines))], len(light.lines), light.work
        for job in list(self.waiting):
            if size >= self.limits.max_batch_lines:
                break
            if (job.key == light.key and not self._heavy(job) and size + len(job.lines) <= self.limits.max_batch_lines
                    and work + job.work <= self.limits.max_work):
                self.waiting.remove(job)
                job.started = True
                batch.append(Part(job, 0, len(job.lines)))
                size += len(job.lines)
                work += job.work
        return batch

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.waiting:
                self.arrived.clear()
                await self.arrived.wait()
                continue
            batch = self._next_batch()
            if not batch:
                continue
            lines = [line for part in batch for line in part.job.lines[part.start: part.end]]
            if self.metrics is not None:
                self.metrics.batch_lines.observe(len(lines))

            def stop() -> bool:  # read between decoder steps, in the worker thread
                return self.stopping.is_set() or not any(part.job.wanted() for part in batch)

            try:
                results = await loop.run_in_executor(self.executor, translate_lines, self.translators,
                                                     batch[0].job.key, lines, stop, self.limits.max_batch_lines)
            except Cancelled:
                for part in batch:
                    if not part.job.future.done():
                        late = time.monotonic() >= part.job.deadline
                        part.job.future.set_exception(Unavailable(
                            too_late(self.limits) if late else "the translation was stopped"))
                continue
            except Exception as error:  # noqa: BLE001 (reported to each waiting request)
                for part in batch:
                    if not part.job.future.done():
                        part.job.future.set_exception(error)
                continue
            self.batches += 1
            self.lines += len(lines)
            if self.metrics is not None:
                self.metrics.lines.inc(len(lines))
            start = 0
            for part in batch:
                job = part.job
                job.done.extend(results[start: start + part.end - part.start])
                start += part.end - part.start
                if job.future.done():  # the client may have gone
                    continue
                if len(job.done) == len(job.lines):
                    job.future.set_result(job.done)
                elif self.stopping.is_set():
                    job.future.set_exception(Unavailable("the service is shutting down"))
                else:  # the rest of a heavy request: back to the front (heavy requests go oldest first)
                    self.waiting.appendleft(job)
                    self.arrived.set()


def translate_lines(translators: Dict[str, LoadedTranslator], key: Tuple[str, int, int], lines: List[str], stop,
                    max_batch_lines: int) -> List[Translation]:
    """The lines' translations with ``key``'s model, beam and nbest, ``max_batch_lines`` at a time (a request may
    hold more), each chunk stopping at its next decoder step once ``stop()`` says so. A chunk that fails is
    translated again one line at a time, so that one bad line does not cost the others theirs."""
    model, beam, nbest = key
    translator = translators[model]
    out: List[Translation] = []
    for start in range(0, len(lines), max_batch_lines):
        chunk = lines[start: start + max_batch_lines]
        try:
            out.extend(translator.details(chunk, beam, nbest, stop=stop))
            continue
        except Cancelled:
            raise
        except Exception as error:  # noqa: BLE001 (one at a time, below)
            logger.error("a batch of %d lines failed (%s); translating them one at a time", len(chunk),
                         type(error).__name__)
        for line in chunk:
            try:
                out.extend(translator.details([line], beam, nbest, stop=stop))
            except Cancelled:
                raise
            except Exception as failure:  # noqa: BLE001
                out.append(Translation("", [], None, None, error=f"translation failed ({type(failure).__name__})"))
    return out


class Metrics:
    """The service's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("translation_requests", "HTTP requests answered, by path and status",
                                ["path", "status"], registry=self.registry)
        self.latency = Histogram("translation_request_seconds", "time to answer POST /translate",
                                 buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
                                 registry=self.registry)
        self.batch_lines = Histogram("translation_batch_lines", "lines translated together",
                                     buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=self.registry)
        self.queue = Gauge("translation_queue_requests", "requests waiting for a worker", registry=self.registry)
        self.lines = Counter("translation_lines", "lines translated", registry=self.registry)


@dataclass
class Service:
    """What the handlers share (``app.state.service``)."""

    translators: Dict[str, LoadedTranslator]
    limits: Limits
    api_key: Optional[str] = None
    metrics: Optional[Metrics] = None
    batcher: Optional[Batcher] = None
    closing: threading.Event = field(default_factory=threading.Event)  # set at SIGTERM (``_Server``)
    closing_since: float = float("inf")  # time.monotonic() of the SIGTERM

    def close(self) -> None:
        if not self.closing.is_set():
            self.closing_since = time.monotonic()
            self.closing.set()


def describe(name: str, translator: LoadedTranslator) -> Dict[str, Any]:
    meta = translator.meta
    return {
        "name": name,
        "source_lang": meta.get("source_lang"),
        "target_lang": meta.get("target_lang"),
        "beam": translator.default_beam,
        "generation": meta.get("generation", {}),
        "quantized": bool(meta.get("quantized")),
        "sentencepiece": bool(meta.get("sentencepiece")),
        "attention": bool(meta.get("attention", True)),
        "max_source_positions": translator.max_source_positions,
    }


def result_json(translation: Translation) -> Dict[str, Any]:
    if translation.error is not None:
        return {"error": translation.error}
    return {
        "translation": translation.text,
        "nbest": [{"text": h.text, "score": h.score} for h in translation.nbest],
        "attention": translation.words._asdict() if translation.words is not None else None,
        "pieces": translation.pieces._asdict() if translation.pieces is not None else None,
    }


def _integer(request: Dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    """``request[name]`` (``default`` where absent), an integer from ``low`` to ``high``, or ``BadRequest``."""
    value = request.get(name, default)
    integer = isinstance(value, int) and not isinstance(value, bool)
    if integer and low <= value <= high:
        return value
    if integer:
        shown = str(value) if abs(value) < 10 ** 30 else "a number of more than 30 digits"
    else:
        shown = json.dumps(value)[:40]
    raise BadRequest(422, f'"{name}" must be an integer from {low} to {high}, got {shown}')


def parse_request(body: bytes, models: Dict[str, LoadedTranslator],
                  limits: Limits) -> Tuple[Tuple[str, int, int], List[str], List[int]]:
    """(model, beam, nbest), the lines and each line's work of a ``POST /translate`` body, or ``BadRequest``."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BadRequest(400, f"the body is not UTF-8 text ({error})") from None
    try:
        request = json.loads(text)
    except json.JSONDecodeError as error:
        raise BadRequest(400, f"the body is not valid JSON ({error})") from None
    except RecursionError:
        raise BadRequest(400, "the body is not valid JSON here: it is nested too deeply") from None
    except ValueError as error:  # e.g. an integer of more digits than Python converts
        raise BadRequest(400, f"the body is not valid JSON here ({error})") from None
    if not isinstance(request, dict):
        raise BadRequest(422, 'the body must be a JSON object: {"text": ["a line", ...]}')
    lines = request.get("text")
    if isinstance(lines, str):
        lines = [lines]
    if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
        raise BadRequest(422, '"text" must be a list of strings (one per line)')
    if len(lines) > limits.max_lines:
        raise BadRequest(413, f"{len(lines)} lines in one request; at most {limits.max_lines}")
    if "model" in request:
        name = request["model"]
        if not isinstance(name, str) or not name:
            raise BadRequest(422, f'"model" must be the name of a loaded model ({", ".join(models)}), or left out '
                                  "for the first")
    else:
        name = next(iter(models))
    if name not in models:
        raise BadRequest(404, f"unknown model {name[:100]!r}; loaded: {', '.join(models)}")
    beam = _integer(request, "beam", models[name].default_beam, 1, limits.max_beam)
    nbest = _integer(request, "nbest", 1, 1, beam)
    translator = models[name]
    lengths = [len(translator.pieces_or_none(line) or ()) + 1 for line in lines]
    # (a line longer than the model takes gets an error of its own and costs nothing)
    costs = [n * beam if n <= translator.max_source_positions else 0 for n in lengths]
    heaviest = max(range(len(costs)), key=costs.__getitem__, default=None)
    if heaviest is not None and costs[heaviest] > limits.max_line_work:
        raise BadRequest(413, f"line {heaviest + 1} asks for {costs[heaviest]} units of work ({lengths[heaviest]} "
                              f"source pieces with its end of sentence, times the beam {beam}); at most "
                              f"{limits.max_line_work} for one line: send it shorter, or ask for a smaller beam")
    work = sum(costs)
    if work > limits.max_work:
        raise BadRequest(413, f"the request asks for {work} units of work (source pieces with their ends of "
                              f"sentence, times the beam {beam}); at most {limits.max_work}: send fewer or shorter "
                              "lines, or ask for a smaller beam")
    return (name, beam, nbest), lines, costs


# ---------------------------------------------------------------------------------------------- the handlers


def _error(status: int, message: str, **headers: str):
    from starlette.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


def _service(request) -> Service:
    return request.app.state.service


def _authorized(request) -> bool:
    key = _service(request).api_key
    if key is None:
        return True
    given = request.headers.get("authorization", "")
    scheme, _, token = given.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())


def _unauthorized():
    return _error(401, "this service needs an API key: send the header Authorization: Bearer KEY",
                  **{"WWW-Authenticate": "Bearer"})


async def _read_body(request, limit: int, timeout: float) -> bytes:
    """The body, at most ``limit`` bytes, within ``timeout`` seconds (else 408: a stalled body must not hold a
    connection). A longer one is read to its end (up to 8 times the limit) and discarded before the 413, so that
    the client, still sending, gets the answer rather than a broken pipe."""
    try:
        return await asyncio.wait_for(_read_all(request, limit), timeout)
    except asyncio.TimeoutError:
        raise BadRequest(408, f"the body did not arrive within {timeout:g} s") from None


async def _read_all(request, limit: int) -> bytes:
    body = bytearray()
    over, seen = False, 0
    async for chunk in request.stream():
        seen += len(chunk)
        if over or seen > limit:
            over = True
            body.clear()
            if seen > 8 * limit:
                break
            continue
        body += chunk
    if over:
        raise BadRequest(413, f"the body is over {limit} bytes")
    return bytes(body)


async def _gone(request) -> None:
    """Returns once the client has hung up."""
    while not await request.is_disconnected():
        await asyncio.sleep(0.2)


async def translate(request):
    """``POST /translate`` (see the module docstring)."""
    from starlette.requests import ClientDisconnect
    from starlette.responses import JSONResponse

    service = _service(request)
    limits = service.limits
    started = time.monotonic()
    if not _authorized(request):
        return _unauthorized()
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        return _error(415, f"the body must be sent as Content-Type: application/json, not {kind[:60]!r}")
    try:
        body = await _read_body(request, limits.max_body_bytes, limits.header_timeout)
        # (sentencepiece over a whole body takes a while: not on the event loop)
        key, lines, costs = await asyncio.get_running_loop().run_in_executor(
            None, parse_request, body, service.translators, limits)
    except BadRequest as bad:
        return _error(bad.status, bad.message, **({"Connection": "close"} if bad.status == 408 else {}))
    except ClientDisconnect:
        return _error(400, "the client went away")
    assert service.batcher is not None
    if service.closing.is_set():
        return _error(503, "the service is shutting down", **{"Retry-After": str(limits.retry_after)})
    if not lines:
        return JSONResponse({"model": key[0], "beam": key[1], "nbest": key[2], "results": []})
    deadline = started + limits.request_timeout
    try:
        job = service.batcher.submit_job(key, lines, deadline, costs)
        future = job.future
    except asyncio.QueueFull:
        return _error(503, f"busy: {limits.max_queue} requests are waiting; try again shortly",
                      **{"Retry-After": str(limits.retry_after)})
    watcher = asyncio.ensure_future(_gone(request))
    try:
        while True:  # wake up now and then: a SIGTERM shortens the wait to --shutdown-timeout
            end = min(deadline, service.closing_since + max(0.0, limits.shutdown_timeout - 1.5))
            if service.closing.is_set() and not job.started:  # still waiting at SIGTERM: answered now
                end = time.monotonic()
            done, _ = await asyncio.wait({future, watcher}, timeout=min(0.5, max(0.0, end - time.monotonic())),
                                         return_when=asyncio.FIRST_COMPLETED)
            if done or time.monotonic() >= end:
                break
    except asyncio.CancelledError:  # the handler itself is cancelled (Ray Serve does so when the client hangs up)
        future.cancel()  # so the request leaves the queue now, not at its deadline
        raise
    finally:
        watcher.cancel()
    if future not in done:
        future.cancel()  # nobody waits for it now: the batcher drops it, or stops its batch
        if watcher in done:
            return _error(400, "the client went away")
        if service.closing.is_set():
            return _error(503, "the service is shutting down", **{"Retry-After": str(limits.retry_after)})
        return _error(503, too_late(limits), **{"Retry-After": str(limits.retry_after)})
    try:
        results = future.result()
    except Unavailable as unavailable:
        return _error(503, str(unavailable), **{"Retry-After": str(limits.retry_after)})
    except Exception as failure:  # noqa: BLE001
        logger.error("translation failed: %s", type(failure).__name__)
        return _error(500, f"translation failed ({type(failure).__name__})")
    if service.metrics is not None:
        service.metrics.latency.observe(time.monotonic() - started)
    name, beam, nbest = key
    return JSONResponse({"model": name, "beam": beam, "nbest": nbest, "results": [result_json(r) for r in results]})


async def models(request):
    """``GET /models``."""
    from starlette.responses import JSONResponse

    if not _authorized(request):
        return _unauthorized()
    service = _service(request)
    return JSONResponse({"models": [describe(name, t) for name, t in service.translators.items()],
                         "limits": service.limits.__dict__})


async def health(request):
    """``GET /health`` (open without the API key)."""
    from starlette.responses import JSONResponse

    service = _service(request)
    batcher = service.batcher
    alive = batcher is not None and batcher.alive
    return JSONResponse({"status": "ok" if alive else "down", "models": list(service.translators),
                         "waiting": len(batcher.waiting) if batcher else 0,
                         "batches": batcher.batches if batcher else 0, "lines": batcher.lines if batcher else 0},
                        status_code=200 if alive else 503)


async def metrics(request):
    """``GET /metrics``: Prometheus's text format."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from starlette.responses import Response

    if not _authorized(request):
        return _unauthorized()
    service = _service(request)
    assert service.metrics is not None
    if service.batcher is not None:
        service.metrics.queue.set(len(service.batcher.waiting))
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def page(request):
    """``GET /``: the page (it asks for the API key when the service wants one)."""
    from starlette.responses import FileResponse

    return FileResponse(os.path.join(STATIC, "index.html"), media_type="text/html; charset=utf-8")


async def _http_error(request, exc):
    """404, 405 and the like, as JSON."""
    status = getattr(exc, "status_code", 500)
    detail = getattr(exc, "detail", "") or ""
    if status == 404:
        detail = f"no such endpoint: {request.url.path[:200]} (see GET /models, POST /translate)"
    elif status == 405:
        detail = f"{request.method} is not allowed on {request.url.path[:200]}"
    return _error(status, str(detail), **dict(getattr(exc, "headers", None) or {}))


def build_app(translators: Dict[str, LoadedTranslator], limits: Optional[Limits] = None,
              api_key: Optional[str] = None):
    """The Starlette application serving ``translators`` (name -> translator, the first is the default)."""
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.routing import Route

    service = Service(translators, limits or Limits(), api_key, Metrics())

    @asynccontextmanager
    async def lifespan(app):
        service.batcher = Batcher(translators, service.limits, service.metrics)
        service.batcher.start()
        yield
        await service.batcher.stop()

    app = Starlette(routes=[
        Route("/translate", translate, methods=["POST"]),
        Route("/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/", page, methods=["GET"]),
    ], lifespan=lifespan, exception_handlers={HTTPException: _http_error},
        middleware=[Middleware(_Count, service=service)])
    app.state.service = service
    return app


class _Count:
    """ASGI middleware: counts the answers by path and status (``/metrics``) and, once the service is shutting
    down, closes every connection after its answer (``Connection: close``), so that no client sends its next
    request on a socket that is about to close."""

    PATHS = ("/translate", "/models", "/health", "/metrics", "/")

    def __init__(self, app, service: Service) -> None:
        self.app = app
        self.service = service
        self.active = 0  # requests being answered

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.active >= self.service.limits.max_connections:  # (uvicorn's own limit answers in plain text)
            response = _error(503, f"busy: {self.active} requests are being answered; try again shortly",
                              **{"Retry-After": str(self.service.limits.retry_after), "Connection": "close"})
            return await response(scope, receive, send)
        self.active += 1
        status = {"code": 500}

        async def sending(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                if self.service.closing.is_set():
                    headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                    message = dict(message, headers=headers + [(b"connection", b"close")])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.active -= 1
            if self.service.metrics is not None:
                path = scope.get("path", "")
                self.service.metrics.requests.labels(path if path in self.PATHS else "other", str(status["code"])).inc()


def header_timeout_protocol(seconds: float):
    """uvicorn's HTTP/1.1 protocol (h11) with a header timeout, which uvicorn lacks: a connection that has not sent
    a whole request head ``seconds`` after it opened, or after it began the next one, is closed (so half-sent
    headers cannot hold connections open)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutH11Protocol(H11Protocol):
        _header_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._arm()

        def connection_lost(self, exc) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            super().connection_lost(exc)

        def _waiting_for_headers(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            if self._header_timer is None and self._waiting_for_headers():
                self._header_timer = self.loop.call_later(seconds, self._expire)

        def _expire(self) -> None:
            self._header_timer = None
            if self._waiting_for_headers() and not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeoutH11Protocol


def load_translators(paths: List[str], threads: Optional[int] = None) -> Dict[str, LoadedTranslator]:
    """name -> translator: a file's (or folder's) name without its extension (made unique), in the order given."""
    translators: Dict[str, LoadedTranslator] = {}
    for path in paths:
        base = os.path.splitext(os.path.basename(os.path.normpath(path)))[0] or "model"
        name, n = base, 2
        while name in translators:
            name, n = f"{base}-{n}", n + 1
        translators[name] = load(path, threads)
    return translators


def read_key(path: str) -> str:
    """The API key in ``path`` (its first line, stripped); refuses an empty one."""
    with open(path, encoding="utf-8") as f:
        key = f.readline().strip()
    if len(key) < 16:
        raise ValueError(f"{path}: the API key must be at least 16 characters")
    return key


def add_arguments(parser: argparse.ArgumentParser, workers: int) -> Limits:
    """The options this service and its Ray Serve form share: the translators, the address, threads, the API key
    and every limit (``workers``: the default of ``--workers``). Returns the default limits."""
    parser.add_argument("translators", nargs="+", metavar="translator")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1", help="the address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads of each translation (ONNX Runtime's intra-op threads; default 1: "
                             "give more cores with --workers, so that a busy machine slows every request a little "
                             "rather than some a lot)")
    parser.add_argument("--api-key-file", help="a file whose first line is the key clients must send "
                                               "(Authorization: Bearer KEY); /health and the page stay open")
    defaults = Limits(workers=workers)
    for name, value in defaults.__dict__.items():
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=value, help=f"default {value}")
    return defaults


def parse_limits(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Limits:
    """The limits ``args`` give, each checked (``parser.error`` names a bad one)."""
    limits = Limits(**{name: getattr(args, name) for name in Limits().__dict__})
    for name, value in limits.__dict__.items():
        if value < (0 if name == "shutdown_timeout" else 1):
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return limits


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fairseq_bahdanau.deploy.serve --port PORT",
                                     description="The translation service: " + __doc__.split("\n\n")[2])
    add_arguments(parser, workers=min(16, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                      else os.cpu_count() or 1))  # one per core: each translates with --threads 1
    args = parser.parse_args(argv)
    limits = parse_limits(parser, args)
    try:
        import prometheus_client  # noqa: F401
        import uvicorn
    except ImportError:
        parser.exit(1, "error: the HTTP service needs its extra: pip install 'fairseq_bahdanau[serve]' (starlette, "
                       "uvicorn and prometheus-client)\n")
    try:
        api_key = read_key(args.api_key_file) if args.api_key_file else None
        translators = load_translators(args.translators, args.threads)
    except (OSError, ValueError) as problem:
        parser.exit(1, f"error: {problem}\n")
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.INFO)
    logger.info("serving %s on http://%s:%d/%s", ", ".join(translators), args.host, args.port,
                " (API key required)" if api_key else "")
    app = build_app(translators, limits, api_key)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="info",
                            timeout_graceful_shutdown=limits.shutdown_timeout,
                            limit_concurrency=limits.max_connections + 64,  # a backstop: ours answers in JSON
                            timeout_keep_alive=5, h11_max_incomplete_event_size=64 * 1024,
                            http=header_timeout_protocol(limits.header_timeout))

    class _Server(uvicorn.Server):
        """uvicorn's server, telling the service when SIGTERM (or Ctrl-C) comes: its requests then get their
        answers, or a 503, within --shutdown-timeout, and their connections close after them."""

        def handle_exit(self, sig, frame) -> None:
            app.state.service.close()
            super().handle_exit(sig, frame)

    _Server(config).run()


if __name__ == "__main__":
    main()
