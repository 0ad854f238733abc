"""Load on the translation service: throughput and latency with concurrent clients, with and without one client
that sends the heaviest legal requests, against the line filter translating one sentence at a time.

    python examples/benchmark/load.py --translator translator.onnx --sentences test.src [--clients 1,8,32,64]
        [--heavy] [--workers 1] [--threads 1] [--busy 0] [--seconds 20] [--json out.json]

Both sides get the same translator and the same sentences, one sentence per request, in a fixed order per client:

* ``filter``: ``python -m fairseq_bahdanau.deploy.serve translator.onnx --threads T``, fed one line and read one
  line at a time (what a single client of a filter gets: no batching), for ``--seconds``;
* ``service, N clients``: ``python -m fairseq_bahdanau.deploy.serve --port P translator.onnx --workers W --threads T``
  on 127.0.0.1 with its other limits at their defaults, and N client threads here, each sending its next sentence when
  the last one is answered, for ``--seconds``. A client answered 503 waits the ``Retry-After`` it is given and
  sends the same sentence again. The service batches what arrives together (``/health`` reports how many batches
  and lines it translated).
* with ``--heavy``, every client count again with one more client that sends, again and again, the heaviest request
  the service accepts: beam ``--max-beam`` (16) and as many of the longest sentences as ``--max-work`` allows. Its
  requests are reported apart; the table's other columns are the N ordinary clients'.
* ``--busy K`` keeps K other processes spinning on the CPU for the whole run (filter included): a machine that is
  busy with something else.

Reported: sentences per second, the median and 99th-percentile latency of a request (ms), 503 answers, other
errors, and for the service the mean batch size. Checked: every ordinary answer equals the filter's translation of
that sentence.
"""

import argparse
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from typing import Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAX_BEAM = 16  # the service's default --max-beam


def percentile(values: List[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def environment(threads: int) -> Dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore",
                PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def spin() -> None:
    while True:
        pass


def run_filter(translator: str, sentences: List[str], seconds: float, threads: int) -> Dict[str, object]:
    """One client of the filter: a line in, wait for its line out, the next line."""
    process = subprocess.Popen([sys.executable, "-m", "fairseq_bahdanau.deploy.serve", translator, "--threads",
                                str(threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
                               env=environment(threads))
    latencies, answers = [], {}
    process.stdin.write(sentences[0] + "\n")  # warm-up
    process.stdin.flush()
    process.stdout.readline()
    start = time.perf_counter()
    i = 0
    while time.perf_counter() - start < seconds:
        sentence = sentences[i % len(sentences)]
        sent = time.perf_counter()
        process.stdin.write(sentence + "\n")
        process.stdin.flush()
        answers[sentence] = process.stdout.readline().rstrip("\n")
        latencies.append(time.perf_counter() - sent)
        i += 1
    elapsed = time.perf_counter() - start
    process.stdin.close()
    process.wait()
    return {"mode": "filter", "clients": 1, "heavy": False, "sentences": i, "seconds": elapsed,
            "latencies": latencies, "answers": answers, "rejected": 0, "errors": 0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict) -> Tuple[int, Optional[dict], float]:
    """(status, the JSON answer or None, Retry-After in seconds)."""
    request = urllib.request.Request(url + "/translate", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as reply:
            return reply.status, json.loads(reply.read()), 0.0
    except urllib.error.HTTPError as error:
        payload = error.read()
        try:
            answer = json.loads(payload)
        except ValueError:
            answer = None
        return error.code, answer, float(error.headers.get("Retry-After") or 0)


def health(url: str) -> dict:
    with urllib.request.urlopen(url + "/health", timeout=10) as reply:
        return json.loads(reply.read())


def heaviest_request(url: str, sentences: List[str]) -> dict:
    """The heaviest request the service accepts at beam 16: the longest sentences, one line fewer until the work
    fits (a request over ``--max-work`` is refused before any translating)."""
    longest = sorted(sentences, key=lambda s: -len(s.split()))
    for lines in range(64, 0, -1):
        body = {"text": longest[:lines], "beam": MAX_BEAM}
        if post(url, body)[0] == 200:
            return body
    raise SystemExit("the service accepts no request at beam 16")


def run_service(translator: str, sentences: List[str], clients: int, seconds: float, threads: int, workers: int,
                heavy: bool, replicas: int = 0, ray_python: str = "") -> Dict[str, object]:
    """One row: the single-process service, or with ``replicas`` its Ray Serve form (a local Ray instance of this
    machine's cores, started by ``ray_python -m fairseq_bahdanau.deploy.ray_serve``)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tempfile.TemporaryFile()
    if replicas:
        command = [ray_python, "-m", "fairseq_bahdanau.deploy.ray_serve", "--replicas", str(replicas)]
    else:
        command = [sys.executable, "-m", "fairseq_bahdanau.deploy.serve"]
    command += ["--port", str(port), translator, "--threads", str(threads), "--workers", str(workers)]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment(threads))
    try:
        for _ in range(900 if replicas else 300):
            try:
                health(url)
                break
            except OSError:
                time.sleep(0.2)
        post(url, {"text": sentences[:1]})  # warm-up
        heavy_body = heaviest_request(url, sentences) if heavy else None
        before = health(url)
        latencies: List[float] = []
        heavy_latencies: List[float] = []
        answers: Dict[str, str] = {}
        counts = {"sentences": 0, "rejected": 0, "errors": 0, "heavy_rejected": 0, "heavy_errors": 0}
        lock = threading.Lock()
        start = time.perf_counter()

        def client(k: int) -> None:
            i = k * 37
            while time.perf_counter() - start < seconds:
                sentence = sentences[i % len(sentences)]
                sent = time.perf_counter()
                status, reply, retry = post(url, {"text": [sentence]})
                took = time.perf_counter() - sent
                with lock:
                    if status == 200:
                        latencies.append(took)
                        answers[sentence] = reply["results"][0]["translation"]
                        counts["sentences"] += 1
                    elif status == 503:
                        counts["rejected"] += 1
                    else:
                        counts["errors"] += 1
                if status == 200:
                    i += 1
                elif retry:
                    time.sleep(retry)

        def heavy_client() -> None:
            while time.perf_counter() - start < seconds:
                sent = time.perf_counter()
                status, _, retry = post(url, heavy_body)
                with lock:
                    if status == 200:
                        heavy_latencies.append(time.perf_counter() - sent)
                    else:
                        counts["heavy_rejected" if status == 503 else "heavy_errors"] += 1
                if status != 200 and retry:
                    time.sleep(retry)

        threads_ = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        if heavy:
            threads_.append(threading.Thread(target=heavy_client))
        for thread in threads_:
            thread.start()
        for thread in threads_:
            thread.join()
        elapsed = time.perf_counter() - start
        after = health(url)
    finally:
        process.terminate()
        process.wait()
    batches = after["batches"] - before["batches"]  # (with replicas: the replica that answered /health)
    lines = after["lines"] - before["lines"]
    return {"mode": f"ray serve, {replicas} replica{'s' if replicas > 1 else ''}" if replicas else "service",
            "clients": clients, "heavy": heavy, "seconds": elapsed, "latencies": latencies,
            "answers": answers, "mean_batch": lines / max(1, batches), "heavy_latencies": heavy_latencies,
            "heavy_lines": len(heavy_body["text"]) if heavy else 0, **counts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--translator", required=True, help="a file fairseq_bahdanau.model.export wrote")
    parser.add_argument("--sentences", required=True, help="source sentences, one per line")
    parser.add_argument("--clients", default="1,8,32,64")
    parser.add_argument("--heavy", action="store_true", help="also each client count with one heavy client")
    parser.add_argument("--seconds", type=float, default=20.0, help="per measurement")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of each translation, both sides")
    parser.add_argument("--workers", type=int, default=1, help="the service's --workers")
    parser.add_argument("--busy", type=int, default=0, help="processes spinning on the CPU meanwhile")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--ray-replicas", default="", help="also the Ray Serve form with these replica counts, e.g. "
                                                          "1,2 (each replica --workers workers)")
    parser.add_argument("--ray-python", default=os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), ".venv-ray", "bin", "python"), help="a Python with Ray Serve (make test-ray)")
    parser.add_argument("--no-service", action="store_true", help="leave the single-process service out")
    args = parser.parse_args()
    with open(args.sentences, encoding="utf-8") as f:
        sentences = [line.rstrip("\n") for line in f if line.strip()]
    spinners = [multiprocessing.Process(target=spin, daemon=True) for _ in range(args.busy)]
    for spinner in spinners:
        spinner.start()
    try:
        results = [run_filter(args.translator, sentences, args.seconds, args.threads)]
        ways = ([] if args.no_service else [0]) + [int(r) for r in args.ray_replicas.split(",") if r]
        for replicas in ways:
            for clients in (int(c) for c in args.clients.split(",")):
                for heavy in ((False, True) if args.heavy else (False,)):
                    results.append(run_service(args.translator, sentences, clients, args.seconds, args.threads,
                                               args.workers, heavy, replicas, args.ray_python))
    finally:
        for spinner in spinners:
            spinner.terminate()
    reference = results[0]["answers"]
    for result in results[1:]:
        wrong = [s for s, a in result["answers"].items() if s in reference and reference[s] != a]
        assert not wrong, f"{result['mode']} x{result['clients']}: {len(wrong)} answers differ from the filter's"
    base = results[0]["sentences"] / results[0]["seconds"]
    print(f"workers {args.workers}, threads {args.threads}, busy {args.busy}, {args.seconds:g} s each")
    print("| way | clients | sentences/s | vs filter | p50 latency (ms) | p99 latency (ms) | 503s | other errors "
          "| mean batch | heavy requests (lines) | heavy p50 (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for r in results:
        rate = r["sentences"] / r["seconds"]
        heavy = r.get("heavy_latencies") or []
        row = {"mode": r["mode"], "clients": r["clients"], "heavy": r["heavy"], "sentences_per_s": round(rate, 2),
               "vs_filter": round(rate / base, 2), "p50_ms": round(1000 * statistics.median(r["latencies"]), 1),
               "p99_ms": round(1000 * percentile(r["latencies"], 0.99), 1), "rejected": r["rejected"],
               "errors": r["errors"], "mean_batch": round(r.get("mean_batch", 1.0), 2), "sentences": r["sentences"],
               "heavy_requests": len(heavy), "heavy_lines": r.get("heavy_lines", 0),
               "heavy_p50_s": round(statistics.median(heavy), 2) if heavy else None,
               "heavy_rejected": r.get("heavy_rejected", 0), "heavy_errors": r.get("heavy_errors", 0)}
        rows.append(row)
        way = row["mode"] + (" + 1 heavy" if row["heavy"] else "")
        heavy_cells = (f"{row['heavy_requests']} ({row['heavy_lines']}) | {row['heavy_p50_s']}" if row["heavy"]
                       else "- | -")
        print(f"| {way} | {row['clients']} | {row['sentences_per_s']} | {row['vs_filter']:.2f}x | {row['p50_ms']} | "
              f"{row['p99_ms']} | {row['rejected']} | {row['errors']} | {row['mean_batch']} | {heavy_cells} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "workers": args.workers, "busy": args.busy,
                       "seconds": args.seconds, "results": rows}, f, indent=1)


if __name__ == "__main__":
    main()
