"""Data parallelism on one CPU machine: ``fairseq-train`` in one process with N threads against N processes with
one thread each under ``torchrun`` (gloo), at the same effective batch, and the all-reduce's share of a step.

    python examples/benchmark/data_parallel.py --data DATA_BIN [--source-lang de --target-lang en] \\
        [--processes 2] [--updates 60] [-- extra fairseq-train options]

Runs, one after another (each alone on the machine):

1. ``fairseq-train`` with ``OMP_NUM_THREADS=N`` and ``--batch-size B``;
2. ``torchrun --nproc_per_node N fairseq-train`` with one thread per process and ``--batch-size B/N``
   (fairseq's default ``--ddp-backend pytorch_ddp``: torch DDP overlaps the all-reduce with the backward);
3. the same with ``--ddp-backend legacy_ddp`` (fairseq's own wrapper all-reduces after the backward, so its time
   can be measured: this script starts fairseq-train's ``cli_main`` itself, timing every
   ``torch.distributed.all_reduce`` and every ``Trainer.train_step``).

Reported: median target tokens/s over fairseq's log intervals after the first (fairseq sums the tokens of all
ranks), the ratio to the single process, and for (3) the share of train-step time spent in all-reduce (which
includes waiting for the slower rank). The model is ``best``'s architecture of the Multi30k recipe in float32.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
USER_DIR = os.path.join(ROOT, "fairseq_bahdanau")
MODEL = ["--arch", "bahdanau_gru", "--init-range", "0.1", "--dropout", "0.3", "--word-dropout", "0.1",
         "--decoder-out-embed-dim", "256", "--share-decoder-input-output-embed", "--optimizer", "adam", "--lr", "2e-3",
         "--clip-norm", "1.0", "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1"]


def timed_worker() -> None:
    """fairseq-train's cli_main with all-reduce and train-step timers; rank r writes $TIMING_DIR/rank{r}.json."""
    import atexit

    import torch.distributed as dist
    from fairseq import trainer as trainer_module
    from fairseq_cli import train

    totals = {"all_reduce_s": 0.0, "train_step_s": 0.0, "steps": 0}
    all_reduce, train_step = dist.all_reduce, trainer_module.Trainer.train_step

    def timed_all_reduce(*args, **kwargs):
        start = time.perf_counter()
        try:
            return all_reduce(*args, **kwargs)
        finally:
            totals["all_reduce_s"] += time.perf_counter() - start

    def timed_train_step(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return train_step(self, *args, **kwargs)
        finally:
            totals["train_step_s"] += time.perf_counter() - start
            totals["steps"] += 1

    dist.all_reduce = timed_all_reduce
    trainer_module.Trainer.train_step = timed_train_step

    def write() -> None:
        with open(os.path.join(os.environ["TIMING_DIR"], f"rank{os.environ.get('RANK', '0')}.json"), "w") as f:
            json.dump(totals, f)

    atexit.register(write)
    train.cli_main()


def tokens_per_second(log: str) -> float:
    rates = [float(x) for x in re.findall(r"train_inner.*?wps[= ]([\d.]+)", log)]
    if len(rates) < 2:
        raise SystemExit(f"too few log intervals to measure:\n{log[-3000:]}")
    return statistics.median(rates[1:])  # the first interval includes warm-up


def main() -> None:
    if sys.argv[1:2] == ["--timed-worker"]:  # under torchrun: everything after it is fairseq-train's
        sys.argv = [sys.argv[0], *sys.argv[2:]]
        timed_worker()
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--source-lang")
    parser.add_argument("--target-lang")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128, help="sentences per update, over all processes")
    parser.add_argument("--updates", type=int, default=60)
    parser.add_argument("--log-interval", type=int, default=10)
    args, extra = parser.parse_known_args()
    extra = [e for e in extra if e != "--"]
    n = args.processes
    bin_dir = os.path.dirname(sys.executable)
    common = [args.data, "--user-dir", USER_DIR, *MODEL, "--cpu", "--num-workers", "0", "--seed", "1",
              "--max-update", str(args.updates), "--disable-validation", "--no-save", "--data-buffer-size", "0",
              "--log-format", "simple", "--log-interval", str(args.log_interval), *extra]
    if args.source_lang:
        common += ["--source-lang", args.source_lang, "--target-lang", args.target_lang]
    fairseq_train = os.path.join(bin_dir, "fairseq-train")
    torchrun = [os.path.join(bin_dir, "torchrun"), "--standalone", "--nproc_per_node", str(n)]
    per_process = str(args.batch_size // n)
    timing = tempfile.mkdtemp(prefix="dp-timing-")
    runs = {
        f"1 process x {n} threads": (n, [fairseq_train, *common, "--batch-size", str(args.batch_size)]),
        f"{n} processes x 1 thread, pytorch_ddp": (1, [*torchrun, fairseq_train, *common, "--batch-size", per_process]),
        f"{n} processes x 1 thread, legacy_ddp": (1, [*torchrun, os.path.abspath(__file__), "--timed-worker", *common,
                                                      "--batch-size", per_process, "--ddp-backend", "legacy_ddp"]),
    }
    results = {}
    for name, (threads, command) in runs.items():
        print(f"measuring {name} ...", file=sys.stderr, flush=True)
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), TIMING_DIR=timing, PYTHONWARNINGS="ignore")
        proc = subprocess.run(command, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise SystemExit(f"{name} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
        results[name] = tokens_per_second(proc.stdout + proc.stderr)
    shares = []
    for rank in range(n):
        with open(os.path.join(timing, f"rank{rank}.json")) as f:
            t = json.load(f)
        shares.append(t["all_reduce_s"] / t["train_step_s"])
    single = results[f"1 process x {n} threads"]
    print(f"| launch (batch {args.batch_size} sentences per update, {args.updates} updates) | target tok/s "
          "| vs 1 process |")
    print("|---|---|---|")
    for name, rate in results.items():
        print(f"| {name} | {rate:.0f} | {rate / single:.2f}x |")
    print("\nall-reduce share of train-step time (legacy_ddp, per rank): "
          + ", ".join(f"{100 * s:.1f}%" for s in shares))


if __name__ == "__main__":
    main()
