"""Speed and memory of bahdanau_gru side by side with fairseq's built-in ``lstm``, in one run, as ratios.

    python examples/benchmark/benchmark.py --data DATA_BIN [--source-lang de --target-lang en]

On the same binarized data and the same batches (batch 128 sentences, the training split's first batches of a
seeded shuffle), each model is measured in its own subprocess (so that peak memory is its own):

* training: target tokens/s after warm-up (forward, backward, Adam step), measured in ``--rounds`` rounds that
  run every model once each (this machine's speed drifts from minute to minute: the table gives the median
  tokens/s and, for the ratio to lstm, the median of the rounds' paired ratios), model FLOPs per target token counted
  with ``torch.utils.flop_counter.FlopCounterMode`` on a training step (with oneDNN off while counting: its fused
  LSTM kernel, which fairseq's ``lstm`` runs on CPU, hides its matrix multiplies from the counter), and the
  achieved fraction of the
  machine's fp32 matrix-multiply rate (measured here too, 2048 x 2048 ``torch.mm``); the peak of live tensor
  memory during one training step (``torch.profiler`` with ``profile_memory``: allocations and frees of every
  operator, in time order, above what was live before the step: the model's own training memory, free of the
  process's baseline), and the process's peak resident memory (``ru_maxrss``) with its growth during training;
* generation: sentences/s with beam 5 and greedy (beam 1), batch 128, on the test split, in every round too
  (medians and paired ratios as for training: a single pass of ``lstm``'s beam search was seen to vary by 38%),
  every sentence made exactly as long as its batch's longest reference (``min_len = max_len_b``): the models are
  all but untrained, and free lengths would time wherever each one's random end-of-sentence falls.

``--device cuda`` measures the same on a GPU (tensor memory: the allocator's peak), in float32 or, with
``--precision amp`` / ``fp16``, as fairseq's ``--amp`` (float16 autocast) / ``--fp16`` (the whole model in float16)
train (`make gpu-check` runs all three).

Models: ``bahdanau_gru`` (the notebook's configuration), fairseq's ``lstm`` at matched sizes (embeddings 256,
bidirectional 512 encoder, 512 decoder, out-embed 256) beside ``bahdanau_gru`` with the same bottleneck
(``--decoder-out-embed-dim 256``) and dropout, the same trained under bfloat16 autocast (``--autocast-bf16``;
generation is float32 either way, so its generation figures measure the same thing again), and the naive
per-step formulation of ``naive.py``
(``tutorial_forward``: the tutorial's way, attention projections and output layer recomputed in the step loop) on
the notebook configuration's weights (training only: it has no incremental decoding). On a CPU without fast
bfloat16 matrix products (no AVX-512 or AMX) the ``--autocast-bf16`` model is left out unless ``--models`` names it:
there it trains many times slower than float32 and tells nothing about the model.
"""

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
USER_DIR = os.path.join(ROOT, "fairseq_bahdanau")

MODELS: Dict[str, List[str]] = {
    "bahdanau_gru": ["--arch", "bahdanau_gru"],
    "naive (tutorial)": ["--arch", "bahdanau_gru"],
    "lstm (matched)": [
        "--arch", "lstm", "--encoder-embed-dim", "256", "--encoder-hidden-size", "512", "--encoder-bidirectional",
        "--decoder-embed-dim", "256", "--decoder-hidden-size", "512", "--decoder-out-embed-dim", "256",
        "--dropout", "0.3",
    ],
    "bahdanau_gru (matched)": ["--arch", "bahdanau_gru", "--decoder-out-embed-dim", "256", "--dropout", "0.3"],
    "bahdanau_gru (matched) --autocast-bf16": [  # no commas in names: --models is comma-separated
        "--arch", "bahdanau_gru", "--decoder-out-embed-dim", "256", "--dropout", "0.3", "--autocast-bf16",
    ],
}
BASELINE = "lstm (matched)"

logger = logging.getLogger("benchmark")


def synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def matmul_gflops(size: int = 2048, repeats: int = 10, device: str = "cpu") -> float:
    import torch

    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    for _ in range(2):
        torch.mm(a, b)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def step_peak_mb(step, device: str = "cpu") -> float:
    """Peak of live tensor memory (MB) while ``step()`` runs, above what was live before: each operator's own
    allocations count from its start, its frees from its end (so the figure errs high; a temporary made and freed
    inside one operator's own code is not seen)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    if device == "cuda":  # the allocator's own peak, above what was live before
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    changes = []
    for event in prof.events():
        usage = event.self_cpu_memory_usage
        if usage > 0:
            changes.append((event.time_range.start, usage))
        elif usage < 0:
            changes.append((event.time_range.end, usage))
    live = peak = 0
    for _, usage in sorted(changes, key=lambda change: change[0]):
        live += usage
        peak = max(peak, live)
    return peak / 2**20


def worker(name: str, args: argparse.Namespace) -> Dict[str, float]:
    """Measure one model in this process."""
    import torch
    from fairseq import options, tasks
    from torch.utils.flop_counter import FlopCounterMode

    import naive as naive_baseline  # this directory's naive.py (the script's directory is on sys.path)

    from fairseq import utils

    torch.manual_seed(1)
    device = args.device
    flags = [args.data, "--user-dir", USER_DIR, "--task", "translation", *MODELS[name]]
    if device == "cpu":
        flags.append("--cpu")
    if args.source_lang:
        flags += ["--source-lang", args.source_lang, "--target-lang", args.target_lang]
    cfg = options.parse_args_and_arch(options.get_training_parser(), flags)
    task = tasks.setup_task(cfg)
    model = task.build_model(cfg).to(device)
    if args.precision == "fp16":  # fairseq's --fp16: the whole model in float16
        model = model.half()
    params = sum(p.numel() for p in model.parameters())
    naive = name.startswith("naive")
    pad = task.target_dictionary.pad()

    def loss_of(sample) -> "torch.Tensor":
        net = sample["net_input"]
        with torch.autocast("cuda", dtype=torch.float16, enabled=args.precision == "amp"):  # fairseq's --amp
            if naive:
                logits = naive_baseline.tutorial_forward(model, net["src_tokens"], net["src_lengths"],
                                                    net["prev_output_tokens"])
            else:
                logits = model(**net)[0]
        return torch.nn.functional.cross_entropy(  # in float32 (the logits are bfloat16 under --autocast-bf16)
            logits.float().view(-1, logits.size(-1)), sample["target"].view(-1), ignore_index=pad, reduction="sum"
        )

    task.load_dataset("train")
    batches = task.get_batch_iterator(
        task.dataset("train"), max_sentences=args.batch_size, max_positions=model.max_positions(), seed=1,
        required_batch_size_multiple=1,
    ).next_epoch_itr(shuffle=True)
    samples = [next(batches) for _ in range(args.warmup + args.steps)]
    if device == "cuda":
        samples = [utils.move_to_cuda(sample) for sample in samples]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()

    if not args.throughput_only:
        # oneDNN's fused LSTM kernel (what fairseq's lstm runs on CPU) is invisible to FlopCounterMode: count with
        # it off, so that every model's matrix multiplies are seen (the count is the model's, not the kernel's).
        with FlopCounterMode(display=False) as counter, torch.backends.mkldnn.flags(enabled=False):
            loss_of(samples[0]).backward()
        flops_per_token = counter.get_total_flops() / samples[0]["ntokens"]
        optimizer.zero_grad()

    loaded = rss_mb()
    tokens, elapsed = 0, 0.0
    for i, sample in enumerate(samples):
        synchronize(device)
        start = time.perf_counter()
        loss_of(sample).backward()
        optimizer.step()
        optimizer.zero_grad()
        synchronize(device)
        if i >= args.warmup:
            elapsed += time.perf_counter() - start
            tokens += sample["ntokens"]
    peak_rss, growth = rss_mb(), rss_mb() - loaded
    if args.throughput_only:
        result = {"train_tok_s": tokens / elapsed}
    else:
        def train_step() -> None:
            loss_of(samples[-1]).backward()
            optimizer.step()
            optimizer.zero_grad()

        result = {
            "params": params,
            "train_tok_s": tokens / elapsed,
            "flops_per_token": flops_per_token,
            "step_peak_mb": step_peak_mb(train_step, device),
            "peak_rss_mb": peak_rss,
            "train_mem_growth_mb": growth,
        }
    if not naive and not args.no_generate:  # every round: one generation pass varies too much
        result.update(generation_speed(model, task, args, device))
    return result


def set_length(generator, length: int) -> None:
    """Make ``generator`` (fairseq's ``SequenceGenerator``, eager or scripted) produce exactly ``length`` tokens
    before the end of sentence (with ``max_len_a=0``): all but untrained models end their sentences wherever a
    random end-of-sentence falls, so free lengths would time different amounts of work."""
    generator.min_len = length
    generator.max_len_b = length


def generation_speed(model, task, args: argparse.Namespace, device: str) -> Dict[str, float]:
    """Sentences/s of fairseq's ``SequenceGenerator`` on ``--gen-subset``, beam 5 and greedy, batch ``--batch-size``,
    every sentence made as long as its batch's longest reference."""
    import torch
    from fairseq import utils
    from fairseq.sequence_generator import SequenceGenerator

    model.eval()
    task.load_dataset(args.gen_subset)
    pad = task.target_dictionary.pad()
    speeds = {}
    for beam, key in ((5, "beam5_sent_s"), (1, "greedy_sent_s")):
        generator = SequenceGenerator([model], task.target_dictionary, beam_size=beam, max_len_a=0)
        itr = task.get_batch_iterator(
            task.dataset(args.gen_subset), max_sentences=args.batch_size, max_positions=model.max_positions(),
            required_batch_size_multiple=1,
        ).next_epoch_itr(shuffle=False)
        sentences, start = 0, time.perf_counter()
        with torch.no_grad():
            for sample in itr:
                if device == "cuda":
                    sample = utils.move_to_cuda(sample)
                # each sentence of the batch as long as its longest reference (pieces, the end of sentence not counted)
                set_length(generator, int(sample["target"].ne(pad).sum(1).max()) - 1)
                generator.generate([model], sample)
                sentences += sample["nsentences"]
        synchronize(device)
        speeds[key] = sentences / (time.perf_counter() - start)
    return speeds


def table(results: Dict[str, Dict[str, float]], gflops: float, device: str = "cpu") -> str:
    base = results.get(BASELINE, {})

    def ratio(name: str, key: str) -> str:
        if f"{key}_ratio" in results[name]:  # the median of the rounds' paired ratios
            return f"{results[name][f'{key}_ratio']:.2f}x"
        value, ref = results[name].get(key), base.get(key)
        return f"{value / ref:.2f}x" if value and ref else "-"

    def fmt(value, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    lines = [
        f"fp32 matrix multiply (2048^2 torch.mm, {device}"
        f"{'' if device == 'cuda' else ', %d threads' % __import__('torch').get_num_threads()}): {gflops:.0f} GFLOP/s",
        "",
        "| model | params | train tok/s | vs lstm | MFLOP/tok | % of matmul rate | step peak MB | vs lstm "
        "| peak RSS MB | train RSS growth MB | beam 5 sent/s | vs lstm | greedy sent/s | vs lstm |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        achieved = r["flops_per_token"] * r["train_tok_s"] / 1e9 / gflops * 100
        lines.append(
            f"| {name} | {r['params'] / 1e6:.1f}M | {r['train_tok_s']:.0f} | {ratio(name, 'train_tok_s')} "
            f"| {r['flops_per_token'] / 1e6:.1f} | {achieved:.0f}% | {r['step_peak_mb']:.0f} "
            f"| {ratio(name, 'step_peak_mb')} | {r['peak_rss_mb']:.0f} | {r['train_mem_growth_mb']:.0f} "
            f"| {fmt(r.get('beam5_sent_s'), '.1f')} | {ratio(name, 'beam5_sent_s')} "
            f"| {fmt(r.get('greedy_sent_s'), '.1f')} | {ratio(name, 'greedy_sent_s')} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="fairseq-preprocess output directory")
    parser.add_argument("--source-lang")
    parser.add_argument("--target-lang")
    parser.add_argument("--gen-subset", default="test")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--models", help="comma-separated subset of: " + ", ".join(MODELS) + " (default: all)")
    parser.add_argument("--no-generate", action="store_true")
    parser.add_argument(
        "--rounds", type=int, default=3,
        help="measure training and generation speed this many times, every model once per round; report the "
        "medians of the speeds and of each round's ratio to lstm (this machine's speed drifts between minutes)",
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--precision", choices=["fp32", "amp", "fp16"], default="fp32",
        help="on cuda: float32, float16 autocast (fairseq's --amp) or the whole model in float16 (--fp16)",
    )
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--throughput-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if args.worker:
        json.dump(worker(args.worker, args), sys.stdout)
        return

    if args.precision != "fp32" and args.device != "cuda":
        parser.error("--precision amp/fp16 is measured on cuda (on CPU: the --autocast-bf16 model)")
    if args.models:
        names = args.models.split(",")
        unknown = [name for name in names if name not in MODELS]
        if unknown:
            parser.error(f"unknown models {unknown}: choose from {list(MODELS)}")
    else:
        sys.path.insert(0, ROOT)
        from fairseq_bahdanau.model.precision import fast_bfloat16_cpu

        names = list(MODELS)
        if args.device == "cuda":  # --autocast-bf16 is CPU-only; on GPUs --precision amp is its counterpart
            names = [name for name in names if "--autocast-bf16" not in MODELS[name]]
        elif not fast_bfloat16_cpu():
            names = [name for name in names if "--autocast-bf16" not in MODELS[name]]
            logger.info("this CPU has no fast bfloat16 matrix products: the --autocast-bf16 model is left out")
    gflops = matmul_gflops(device=args.device)
    results: Dict[str, Dict[str, float]] = {}
    speeds = ("train_tok_s", "beam5_sent_s", "greedy_sent_s")
    rounds: Dict[str, Dict[str, List[float]]] = {key: {name: [] for name in names} for key in speeds}
    for round_ in range(max(1, args.rounds)):
        for name in names:
            logger.info("round %d: measuring %s ...", round_ + 1, name)
            extra = ["--throughput-only"] if round_ > 0 else []
            command = [sys.executable, __file__, "--worker", name, *extra, *sys.argv[1:]]
            proc = subprocess.run(command, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
            measured = json.loads(proc.stdout.strip().splitlines()[-1])
            results.setdefault(name, measured)
            for key in speeds:
                if key in measured:
                    rounds[key][name].append(measured[key])
    for key in speeds:  # the median speed, and the median of the rounds' paired ratios to lstm
        for name in names:
            values = rounds[key][name]
            if not values:
                continue
            results[name][key] = statistics.median(values)
            results[name][f"{key}_rounds"] = values
            if BASELINE in names and rounds[key][BASELINE]:
                paired = [mine / base for mine, base in zip(values, rounds[key][BASELINE])]
                results[name][f"{key}_ratio"] = statistics.median(paired)
    report = table(results, gflops, args.device)
    for key, label in zip(speeds, ("training tokens/s", "beam 5 sentences/s", "greedy sentences/s")):
        report += f"\n\n{label} in each round: " + "; ".join(
            f"{name} {', '.join(f'{v:.1f}' for v in rounds[key][name])}" for name in names if rounds[key][name]
        )
    print(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"matmul_gflops": gflops, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
