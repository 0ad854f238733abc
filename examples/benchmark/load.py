"""Load on the translation service: throughput and latency with 1, 4 and 16 concurrent clients, against the line
filter translating one sentence at a time.

    python examples/benchmark/load.py --translator translator.onnx --sentences test.src [--clients 1,4,16]
        [--seconds 20] [--threads 1] [--json out.json]

Both sides get the same translator, the same CPU threads for translating (``--threads``) and the same sentences,
one sentence per request, in a fixed order per client:

* ``filter``: ``python -m fairseq_bahdanau.serve translator.onnx``, fed one line and read one line at a time (what a
  single client of a filter gets: no batching), for ``--seconds``;
* ``service, N clients``: ``python -m fairseq_bahdanau.serve --port P translator.onnx`` on 127.0.0.1, and N client
  threads here, each sending its next sentence when the last one is answered, for ``--seconds``. The service
  batches what arrives together (``/health`` reports how many batches and lines it translated).

Reported: sentences per second, the median and 99th-percentile latency of a request (ms), and for the service the
mean batch size. Checked: every answer equals the filter's translation of that sentence.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def percentile(values: List[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def environment(threads: int) -> Dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore",
                PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def run_filter(translator: str, sentences: List[str], seconds: float, threads: int) -> Dict[str, object]:
    """One client of the filter: a line in, wait for its line out, the next line."""
    process = subprocess.Popen([sys.executable, "-m", "fairseq_bahdanau.serve", translator, "--threads",
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
    return {"mode": "filter", "clients": 1, "sentences": i, "seconds": elapsed, "latencies": latencies,
            "answers": answers}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url + "/translate", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as reply:
        return json.loads(reply.read())


def health(url: str) -> dict:
    with urllib.request.urlopen(url + "/health", timeout=10) as reply:
        return json.loads(reply.read())


def run_service(translator: str, sentences: List[str], clients: int, seconds: float,
                threads: int) -> Dict[str, object]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tempfile.TemporaryFile()
    process = subprocess.Popen([sys.executable, "-m", "fairseq_bahdanau.serve", "--port", str(port), translator,
                                "--threads", str(threads), "--max-queue", str(4 * clients)], stdout=log,
                               stderr=subprocess.STDOUT, env=environment(threads))
    try:
        for _ in range(300):
            try:
                health(url)
                break
            except OSError:
                time.sleep(0.2)
        post(url, {"text": sentences[:1]})  # warm-up
        before = health(url)
        latencies: List[float] = []
        answers: Dict[str, str] = {}
        count = [0]
        lock = threading.Lock()
        start = time.perf_counter()

        def client(k: int) -> None:
            i = k * 37
            while time.perf_counter() - start < seconds:
                sentence = sentences[i % len(sentences)]
                sent = time.perf_counter()
                reply = post(url, {"text": [sentence]})
                took = time.perf_counter() - sent
                with lock:
                    latencies.append(took)
                    answers[sentence] = reply["results"][0]["translation"]
                    count[0] += 1
                i += 1

        workers = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        elapsed = time.perf_counter() - start
        after = health(url)
    finally:
        process.terminate()
        process.wait()
    batches = after["batches"] - before["batches"]
    lines = after["lines"] - before["lines"]
    return {"mode": "service", "clients": clients, "sentences": count[0], "seconds": elapsed,
            "latencies": latencies, "answers": answers, "mean_batch": lines / max(1, batches)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--translator", required=True, help="a file fairseq_bahdanau.export wrote")
    parser.add_argument("--sentences", required=True, help="source sentences, one per line")
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--seconds", type=float, default=20.0, help="per measurement")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for translating, both sides")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    with open(args.sentences, encoding="utf-8") as f:
        sentences = [line.rstrip("\n") for line in f if line.strip()]
    results = [run_filter(args.translator, sentences, args.seconds, args.threads)]
    for clients in (int(c) for c in args.clients.split(",")):
        results.append(run_service(args.translator, sentences, clients, args.seconds, args.threads))
    reference = results[0]["answers"]
    for result in results[1:]:
        wrong = [s for s, a in result["answers"].items() if s in reference and reference[s] != a]
        assert not wrong, f"{result['mode']} x{result['clients']}: {len(wrong)} answers differ from the filter's"
    base = results[0]["sentences"] / results[0]["seconds"]
    print("| way | clients | sentences/s | vs filter | p50 latency (ms) | p99 latency (ms) | mean batch |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for r in results:
        rate = r["sentences"] / r["seconds"]
        row = {"mode": r["mode"], "clients": r["clients"], "sentences_per_s": round(rate, 2),
               "vs_filter": round(rate / base, 2), "p50_ms": round(1000 * statistics.median(r["latencies"]), 1),
               "p99_ms": round(1000 * percentile(r["latencies"], 0.99), 1),
               "mean_batch": round(r.get("mean_batch", 1.0), 2), "sentences": r["sentences"]}
        rows.append(row)
        print(f"| {row['mode']} | {row['clients']} | {row['sentences_per_s']} | {row['vs_filter']:.2f}x | "
              f"{row['p50_ms']} | {row['p99_ms']} | {row['mean_batch']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "seconds": args.seconds, "results": rows}, f, indent=1)


if __name__ == "__main__":
    main()
