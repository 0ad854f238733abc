"""The translation service as a Ray Serve application: the same HTTP API and page, answered by N replicas.

    pip install '.[serve,ray]'
    python -m fairseq_bahdanau.deploy.ray_serve --port 8000 --replicas 2 translator.onnx [other.onnx ...]
    RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING=0 ray start --head ...   # a cluster of several machines: the head,
    RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING=0 ray start --address HEAD:6379 --num-cpus N   # each other machine,
    python -m fairseq_bahdanau.deploy.ray_serve --address auto ...     # then this, on the head

Each replica is a Ray actor that loads the translators and runs the single-process service's own ASGI application
(``service.build_app``): the same endpoints, limits, error answers and batcher (requests that reach one replica
together are translated together, by its ``--workers`` threads). Ray Serve's proxy takes the HTTP connections
(on the head node only) and hands each request to a replica; Ray restarts a replica whose process dies. Every
answer carries ``X-Served-By: PID@NODE`` (the replica's process and Ray node). Ray's proxy sends every request to a
replica on its own node while that replica has room (``RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING``, on by
default), and a replica here has room for ``--max-connections`` requests, so the other nodes would get nothing:
the cluster must be started with that variable at 0, as above (this command sets it for the cluster it starts
itself).

The translator files must be readable at the same path on every node (a shared or copied folder).
``--max-connections`` bounds the requests each replica answers at once, and ``--max-queue`` those waiting in it
(503 past either); a request whose client hangs up leaves its replica's queue (Ray cancels its handler).
SIGTERM (or Ctrl-C) deletes the application first, so that each replica answers what it has in flight (for up to
``--shutdown-timeout`` seconds) while the proxy still relays the answers; requests that arrive meanwhile get the
proxy's 404 (plain text), then the port closes. A request still running at the timeout gets Ray's 500 (plain text;
the single-process server answers 503 JSON), and Ray's own teardown takes about 5 s more: give a supervisor's stop
timeout ``--shutdown-timeout`` plus 10 s or so.

What the single-process server does at the connection level is Ray's proxy's here, and the proxy does less: idle
keep-alive connections close after ``--header-timeout``, but a connection that sends nothing, or never finishes its
headers, is kept, without limit on their number (until the process runs out of file descriptors), and the proxy
answers some requests itself in plain text (a malformed request line, an unknown method, a replica that died mid-
request: 500) and serves its own ``/-/routes`` and ``/-/healthz``; an oversized body reaches the replica's 413 only
after the proxy has taken it in (2.7 s for 20 MB here, against 0.08 s single-process), and the processes keep the
memory. Facing untrusted clients, put a reverse proxy with header timeouts, connection and body limits in front of
it (nginx's ``client_header_timeout``, ``limit_conn``, ``client_max_body_size``), as for any Ray Serve application;
the single-process server needs none.
"""

import argparse
import logging
import os
import signal
import threading
from typing import Any, Callable, List, Optional

from .service import Limits, add_arguments, build_app, load_translators, parse_limits, read_key

logger = logging.getLogger(__name__)

#: the application's and its deployment's name in Ray Serve
NAME = "translation"


class _ServedBy:
    """ASGI middleware: ``X-Served-By: PID@NODE`` on every answer."""

    def __init__(self, app: Any, value: str) -> None:
        self.app = app
        self.value = value.encode()

    async def __call__(self, scope, receive, send):
        async def sending(message):
            if message["type"] == "http.response.start":
                message = dict(message, headers=list(message.get("headers", [])) + [(b"x-served-by", self.value)])
            await send(message)

        return await self.app(scope, receive, sending)


class TranslationService:
    """The deployment's class: Ray Serve's ingress wrapper gives it the application ``replica_app`` builds."""


def replica_app(paths: List[str], limits: Limits, api_key: Optional[str], threads: int) -> Callable[[], Any]:
    """A builder that Ray Serve calls in each replica: the service's application over the translators."""

    def build() -> Any:
        import ray

        node = ray.get_runtime_context().get_node_id()
        return _ServedBy(build_app(load_translators(paths, threads), limits, api_key), f"{os.getpid()}@{node}")

    return build


def application(paths: List[str], replicas: int, limits: Optional[Limits] = None, api_key: Optional[str] = None,
                threads: int = 1, replica_cpus: float = 1.0):
    """The Ray Serve application: ``replicas`` replicas of the service over the translators at ``paths``, each
    reserving ``replica_cpus`` of a node's CPUs; a replica is sent up to ``max_connections`` requests at once,
    so that its own queue and batcher see them (Ray's default, 5, would batch nothing)."""
    from ray import serve

    limits = limits or Limits()
    paths = [os.path.abspath(path) for path in paths]
    ingress = serve.ingress(replica_app(paths, limits, api_key, threads))(TranslationService)
    deployment = serve.deployment(ingress, name=NAME, num_replicas=replicas,
                                  max_ongoing_requests=limits.max_connections,
                                  graceful_shutdown_timeout_s=float(limits.shutdown_timeout),
                                  ray_actor_options={"num_cpus": replica_cpus})
    return deployment.bind()


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fairseq_bahdanau.deploy.ray_serve --port PORT",
                                     description=__doc__.split("\n\n")[0])
    add_arguments(parser, workers=1)  # one per replica CPU
    parser.add_argument("--replicas", type=int, default=1, help="replicas of the service (default 1)")
    parser.add_argument("--replica-cpus", type=float, default=1.0,
                        help="CPUs each replica reserves on its node (default 1: give a replica's --workers cores)")
    parser.add_argument("--address", help="a running Ray cluster (e.g. auto); default: start one on this machine")
    args = parser.parse_args(argv)
    limits = parse_limits(parser, args)
    if args.replicas < 1:
        parser.error("--replicas must be at least 1")
    try:
        import ray
        from ray import serve
    except ImportError:
        parser.exit(1, "error: the Ray Serve form needs its extra: pip install 'fairseq_bahdanau[serve,ray]'\n")
    missing = [path for path in args.translators if not os.path.exists(path)]
    if missing:
        parser.exit(1, f"error: no such translator: {', '.join(missing)}\n")
    try:
        api_key = read_key(args.api_key_file) if args.api_key_file else None
    except (OSError, ValueError) as problem:
        parser.exit(1, f"error: {problem}\n")
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.INFO)
    if args.address is None:  # spread requests over every node's replicas (see the module docstring)
        os.environ.setdefault("RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING", "0")
    ray.init(address=args.address, include_dashboard=False)
    stop = threading.Event()  # (after ray.init, whose own SIGTERM handler would end the process at once)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    # (idle keep-alive connections close after --header-timeout, as in the single-process server)
    serve.start(http_options={"host": args.host, "port": args.port, "keep_alive_timeout_s": limits.header_timeout},
                proxy_location="HeadOnly")
    serve.run(application(args.translators, args.replicas, limits, api_key, args.threads, args.replica_cpus),
              name=NAME, route_prefix="/")
    logger.info("serving %s on http://%s:%d/ with %d replica(s)", ", ".join(args.translators), args.host, args.port,
                args.replicas)
    stop.wait()
    logger.info("shutting down: the replicas answer what they have (up to --shutdown-timeout), then Ray Serve stops")
    # The application first: each replica drains its requests in flight (graceful_shutdown_timeout_s) while the
    # proxy still relays their answers; serve.shutdown() alone would kill the proxy first, cutting them off.
    serve.delete(NAME)
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
