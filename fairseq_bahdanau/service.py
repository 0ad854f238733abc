"""The translation service: exported translators behind HTTP, with a page that shows what attention does.

    python -m fairseq_bahdanau.serve --port 8000 attention.onnx [encdec.onnx ...]   (pip install .[serve])

Endpoints (JSON in and out; every error is a JSON object ``{"error": MESSAGE}`` with a 4xx or 503 status):

``POST /translate``  ``{"text": [lines], "model": NAME, "beam": K, "nbest": N}`` (``model``: default the first
    loaded; ``beam``: default the translator's own, 1 to ``--max-beam``; ``nbest``: default 1, 1 to ``beam``) ->
    ``{"model": NAME, "beam": K, "nbest": N, "results": [one per line]}``, each result either
    ``{"translation", "nbest": [{"text", "score"}], "attention": {"source", "target", "weights"} or null,
    "pieces": the same over sentencepiece pieces or null}`` or ``{"error": MESSAGE}`` for a line that cannot be
    translated (the others are). ``weights[t][s]``: what target word ``t`` gave source word ``s``; word weights are
    piece weights summed over a source word's pieces and averaged over a target word's pieces (rows sum to 1;
    the last column is the source's end of sentence). Models without attention (``--attention-type none``)
    answer ``"attention": null`` and say so in ``GET /models``. An empty or blank line translates to ``""``.
``GET /models``  the loaded translators, with their options. ``GET /health``  ``{"status": "ok", ...}`` with the
    requests waiting and the batches and lines translated so far.
``GET /``  the page.

Bad input: invalid JSON or text that is not UTF-8 (400), a body over ``--max-body-bytes`` or more lines than
``--max-lines`` (413), an unknown model (404), a ``beam`` or ``nbest`` out of range or a ``text`` that is not a
list of strings (422). Requests that arrive together are translated together, per model, beam and n-best, up to
``--max-batch-lines`` lines, by ``--workers`` worker threads (default 1); at most ``--max-queue`` requests wait, and one more gets 503
with ``Retry-After``. SIGTERM (or Ctrl-C) stops taking connections and finishes the requests in flight (uvicorn's
graceful shutdown) before the process exits.
"""

import argparse
import asyncio
import collections
import concurrent.futures
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, List, Optional, Tuple

from .serve import LoadedTranslator, Translation, load

logger = logging.getLogger(__name__)

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")


@dataclass
class Limits:
    max_lines: int = 64  # lines in one request
    max_body_bytes: int = 1 << 20  # 1 MiB
    max_beam: int = 16
    max_queue: int = 64  # requests waiting for the worker
    max_batch_lines: int = 64  # lines translated together
    workers: int = 1  # batches translated at once, each in its own thread (the translators are shared)
    retry_after: int = 1  # seconds, in 503 answers


class BadRequest(Exception):
    """A request the service refuses: its HTTP status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Job:
    """One request's lines, waiting for the worker."""

    key: Tuple[str, int, int]  # model, beam, nbest
    lines: List[str]
    future: "asyncio.Future[List[Translation]]" = field(repr=False)


class Batcher:
    """Translates the lines of requests that arrive together in one batch per (model, beam, nbest), in
    ``workers`` threads (ONNX Runtime's sessions are shared by them). At most ``max_queue`` requests wait; a
    request whose key differs from the batch being formed keeps its place for a later batch."""

    def __init__(self, translators: Dict[str, LoadedTranslator], limits: Limits) -> None:
        self.translators = translators
        self.limits = limits
        self.waiting: Deque[Job] = collections.deque()
        self.arrived = asyncio.Event()
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, limits.workers),
                                                              thread_name_prefix="translate")
        self.tasks: List["asyncio.Task[None]"] = []
        self.batches = 0  # batches translated so far (GET /health)
        self.lines = 0  # lines translated so far

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self._work()) for _ in range(max(1, self.limits.workers))]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=True)

    def submit(self, key: Tuple[str, int, int], lines: List[str]) -> "asyncio.Future[List[Translation]]":
        """Queue a request's lines; raises ``asyncio.QueueFull`` when ``max_queue`` requests already wait."""
        if len(self.waiting) >= self.limits.max_queue:
            raise asyncio.QueueFull
        future = asyncio.get_running_loop().create_future()
        self.waiting.append(Job(key, lines, future))
        self.arrived.set()
        return future

    def _next_batch(self) -> List[Job]:
        """The oldest waiting request, and the later ones with its key that fit beside it (taken out of the
        queue); the others keep their places."""
        first = self.waiting.popleft()
        batch, size = [first], len(first.lines)
        for job in list(self.waiting):
            if size >= self.limits.max_batch_lines:
                break
            if job.key == first.key and size + len(job.lines) <= self.limits.max_batch_lines:
                self.waiting.remove(job)
                batch.append(job)
                size += len(job.lines)
        return batch

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.waiting:
                self.arrived.clear()
                await self.arrived.wait()
                continue
            batch = self._next_batch()
            lines = [line for job in batch for line in job.lines]
            try:
                results = await loop.run_in_executor(self.executor, self._translate, batch[0].key, lines)
            except Exception as error:  # noqa: BLE001 (reported to each waiting request)
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(error)
                continue
            self.batches += 1
            self.lines += len(lines)
            start = 0
            for job in batch:
                if not job.future.done():  # the client may have gone
                    job.future.set_result(results[start: start + len(job.lines)])
                start += len(job.lines)

    def _translate(self, key: Tuple[str, int, int], lines: List[str]) -> List[Translation]:
        model, beam, nbest = key
        translator = self.translators[model]
        try:
            return translator.details(lines, beam, nbest)
        except Exception:  # noqa: BLE001 (one bad line must not cost the others theirs: one at a time)
            logger.exception("a batch of %d lines failed; translating them one at a time", len(lines))
            out = []
            for line in lines:
                try:
                    out.extend(translator.details([line], beam, nbest))
                except Exception as error:  # noqa: BLE001
                    out.append(Translation("", [], None, None, error=f"translation failed: {error}"))
            return out


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


def parse_request(body: bytes, models: Dict[str, LoadedTranslator], limits: Limits) -> Tuple[Tuple[str, int, int],
                                                                                              List[str]]:
    """(model, beam, nbest) and the lines of a ``POST /translate`` body, or ``BadRequest``."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BadRequest(400, f"the body is not UTF-8 text ({error})") from None
    try:
        request = json.loads(text)
    except json.JSONDecodeError as error:
        raise BadRequest(400, f"the body is not valid JSON ({error})") from None
    if not isinstance(request, dict):
        raise BadRequest(422, 'the body must be a JSON object: {"text": ["a line", ...]}')
    lines = request.get("text")
    if isinstance(lines, str):
        lines = [lines]
    if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
        raise BadRequest(422, '"text" must be a list of strings (one per line)')
    if len(lines) > limits.max_lines:
        raise BadRequest(413, f"{len(lines)} lines in one request; at most {limits.max_lines}")
    name = request.get("model") or next(iter(models))
    if name not in models:
        raise BadRequest(404, f"unknown model {name!r}; loaded: {', '.join(models)}")
    beam = request.get("beam", models[name].default_beam)
    if not isinstance(beam, int) or isinstance(beam, bool) or not 1 <= beam <= limits.max_beam:
        raise BadRequest(422, f'"beam" must be an integer from 1 to {limits.max_beam}, got {beam!r}')
    nbest = request.get("nbest", 1)
    if not isinstance(nbest, int) or isinstance(nbest, bool) or not 1 <= nbest <= beam:
        raise BadRequest(422, f'"nbest" must be an integer from 1 to the beam ({beam}), got {nbest!r}')
    return (name, beam, nbest), lines


def build_app(translators: Dict[str, LoadedTranslator], limits: Optional[Limits] = None):
    """The Starlette application serving ``translators`` (name -> translator, the first is the default)."""
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import FileResponse, JSONResponse
    from starlette.routing import Route

    limits = limits or Limits()
    state: Dict[str, Batcher] = {}

    def error(status: int, message: str, **headers: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers or None)

    async def read_body(request: Request) -> bytes:
        """The body, at most ``max_body_bytes``. A longer one is read to its end (up to 8 times the limit) and
        discarded before the 413, so that the client, still sending, gets the answer rather than a broken pipe."""
        body = bytearray()
        over, seen = False, 0
        async for chunk in request.stream():
            seen += len(chunk)
            if over or seen > limits.max_body_bytes:
                over = True
                body.clear()
                if seen > 8 * limits.max_body_bytes:
                    break
                continue
            body += chunk
        if over:
            raise BadRequest(413, f"the body is over {limits.max_body_bytes} bytes")
        return bytes(body)

    async def translate(request: Request) -> JSONResponse:
        try:
            key, lines = parse_request(await read_body(request), translators, limits)
        except BadRequest as bad:
            return error(bad.status, bad.message)
        except ClientDisconnect:
            return error(400, "the client went away")
        try:
            future = state["batcher"].submit(key, lines)
        except asyncio.QueueFull:
            return error(503, f"busy: {limits.max_queue} requests are waiting; try again shortly",
                         **{"Retry-After": str(limits.retry_after)})
        try:
            results = await future
        except Exception as failure:  # noqa: BLE001
            logger.exception("translation failed")
            return error(500, f"translation failed: {failure}")
        name, beam, nbest = key
        return JSONResponse({"model": name, "beam": beam, "nbest": nbest,
                             "results": [result_json(r) for r in results]})

    async def models(request: Request) -> JSONResponse:
        return JSONResponse({"models": [describe(name, t) for name, t in translators.items()],
                             "limits": limits.__dict__})

    async def health(request: Request) -> JSONResponse:
        batcher = state["batcher"]
        return JSONResponse({"status": "ok", "models": list(translators), "waiting": len(batcher.waiting),
                             "batches": batcher.batches, "lines": batcher.lines})

    async def page(request: Request) -> FileResponse:
        return FileResponse(os.path.join(STATIC, "index.html"), media_type="text/html; charset=utf-8")

    @asynccontextmanager
    async def lifespan(app):
        state["batcher"] = Batcher(translators, limits)
        state["batcher"].start()
        yield
        await state["batcher"].stop()

    app = Starlette(routes=[
        Route("/translate", translate, methods=["POST"]),
        Route("/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/", page, methods=["GET"]),
    ], lifespan=lifespan)
    app.state.batcher = state
    return app


def load_translators(paths: List[str], threads: Optional[int] = None) -> Dict[str, LoadedTranslator]:
    """name -> translator: a file's (or folder's) name without its extension (made unique), in the order given."""
    translators: Dict[str, LoadedTranslator] = {}
    for path in paths:
        base = os.path.splitext(os.path.basename(path))[0] or "model"
        name, n = base, 2
        while name in translators:
            name, n = f"{base}-{n}", n + 1
        translators[name] = load(path, threads)
    return translators


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fairseq_bahdanau.serve --port PORT",
                                     description="The translation service: " + __doc__.split("\n\n")[2])
    parser.add_argument("translators", nargs="+", metavar="translator")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1", help="the address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--threads", type=int, help="CPU threads of each translation (ONNX Runtime's intra-op "
                                                    "threads; default: the machine's cores)")
    defaults = Limits()
    for name, value in defaults.__dict__.items():
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=value, help=f"default {value}")
    args = parser.parse_args(argv)
    limits = Limits(**{name: getattr(args, name) for name in defaults.__dict__})
    try:
        import uvicorn
    except ImportError:
        parser.exit(1, "error: the HTTP service needs its extra: pip install 'fairseq_bahdanau[serve]' (starlette and "
                       "uvicorn)\n")
    try:
        translators = load_translators(args.translators, args.threads)
    except (OSError, ValueError) as problem:
        parser.exit(1, f"error: {problem}\n")
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.INFO)
    logger.info("serving %s on http://%s:%d/", ", ".join(translators), args.host, args.port)
    uvicorn.run(build_app(translators, limits), host=args.host, port=args.port, log_level="info",
                timeout_graceful_shutdown=None)


if __name__ == "__main__":
    main()
