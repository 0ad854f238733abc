"""Single-sentence latency: batch 1, one thread, the test sentences in order, beam 5 and greedy.

    python examples/benchmark/latency.py --data DATA_BIN [--source-lang de --target-lang en] [--sentences N]
    python examples/benchmark/latency.py --data DATA_BIN ... --trained NAME=CHECKPOINT[:CHECKPOINT...] ...

Four ways to translate, side by side in one process, taking turns sentence by sentence (so that this machine's
drift from minute to minute falls on all of them alike):

* ``lstm``: fairseq's built-in ``lstm`` at matched sizes (as in benchmark.py) through fairseq's ``SequenceGenerator``;
* ``ours eager``: ``bahdanau_gru`` (matched) through the same generator;
* ``translator``: the ONNX translator ``python -m fairseq_bahdanau.model.export`` writes, loaded back
  (``fairseq_bahdanau.deploy``: ONNX Runtime and the numpy search) and given the sentence's pieces (the dictionary
  look-ups and padding are inside it; sentencepiece's own encoding, some microseconds, is not timed);
  ``translator int8``: the same with ``--quantize`` (int8 weights).

(The TorchScript translator that preceded the ONNX one, and fairseq's generator scripted, are measured beside it
once, in ``deploy.py``'s run of the benchmark README.)

The models are untrained (seeded), so every system is made to produce exactly the reference translation's length
(``min_len = max_len_b = `` its token count, ``max_len_a = 0``): each sentence costs every system the same number
of decoder steps. Reported: median and 90th-percentile milliseconds per sentence, and the ratio of lstm's median to
each. ``--profile`` first splits one generation step at batch 1 into the model's incremental step and the
generator's own work around it.

``--trained`` measures trained checkpoints instead, as they would be deployed: each ``NAME=PATHS`` (several
colon-separated checkpoints make an ensemble) exported as the ONNX translator (``fairseq_bahdanau.model.export``; with
``--quantize`` its int8 twin too) at beam 5 and greedy, every translator taking turns sentence by sentence. Here the
translations end where the model ends them, so a system's time includes the length it chooses: reported are the
median and 90th percentile milliseconds per sentence, the mean number of target pieces, and the first system's beam-5
median over each (a student's greedy translator against its teacher's beam 5, say).
"""

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from benchmark import MODELS, USER_DIR, set_length  # noqa: E402  (this directory's benchmark.py)

from fairseq_bahdanau.deploy.translator import OnnxTranslator  # noqa: E402

SYSTEMS = ["lstm", "ours eager", "translator", "translator int8"]


def build(name: str, args: argparse.Namespace):
    """A model of benchmark.py's ``name`` (untrained, seed 1, eval mode) and its task."""
    from fairseq import options, tasks

    torch.manual_seed(1)
    flags = [args.data, "--user-dir", USER_DIR, "--task", "translation", "--cpu", *MODELS[name]]
    if args.source_lang:
        flags += ["--source-lang", args.source_lang, "--target-lang", args.target_lang]
    cfg = options.parse_args_and_arch(options.get_training_parser(), flags)
    task = tasks.setup_task(cfg)
    return task.build_model(cfg).eval(), task


def percentile(values: List[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def profile_step(model, generator, sample, length: int, repeats: int = 200) -> Dict[str, float]:
    """Milliseconds of one decoder step at batch 1 x ``beam`` rows (the model's incremental forward and
    log-softmax alone) against one whole generation step (a sentence's time over its steps)."""
    beam = generator.beam_size
    net = sample["net_input"]
    with torch.no_grad():
        encoder_out = model.encoder(net["src_tokens"], src_lengths=net["src_lengths"])
        encoder_out = model.encoder.reorder_encoder_out(encoder_out, torch.zeros(beam, dtype=torch.long))
        tokens = torch.full((beam, 1), model.decoder.dictionary.eos(), dtype=torch.long)
        state: Dict = {}
        model.decoder(tokens, encoder_out=encoder_out, incremental_state=state)
        start = time.perf_counter()
        for _ in range(repeats):
            out = model.decoder(tokens, encoder_out=encoder_out, incremental_state=state)
            model.get_normalized_probs(out, log_probs=True)
        model_ms = (time.perf_counter() - start) / repeats * 1e3
        set_length(generator, length)
        start = time.perf_counter()
        for _ in range(20):
            generator.forward(sample)
        step_ms = (time.perf_counter() - start) / 20 / (length + 1) * 1e3
    return {"model step": model_ms, "generation step": step_ms}


def trained_latency(args: argparse.Namespace) -> None:
    """The ``--trained`` mode (see the module docstring)."""
    from fairseq_bahdanau.model import export

    systems: Dict[str, Callable] = {}
    dataset = src_dict = None
    names: List[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.trained:
            name, _, joined = spec.partition("=")
            if not name or not joined:
                raise SystemExit(f"error: --trained takes NAME=CHECKPOINT[:CHECKPOINT...], got {spec!r}")
            if name in names:
                raise SystemExit(f"error: --trained names {name!r} twice")
            names.append(name)
            paths = joined.split(":")
            for path in paths:
                if not os.path.isfile(path):
                    raise SystemExit(f"error: --trained {name}: no checkpoint at {path}")
            models, task = export.load(paths, args.data, args.source_lang, args.target_lang)
            if dataset is None:
                task.load_dataset(args.gen_subset)
                dataset, src_dict = task.dataset(args.gen_subset), task.source_dictionary
            for quantize in (False, True) if args.quantize else (False,):
                folder = os.path.join(tmp, f"{len(systems)}.onnx")  # written and loaded back, as a service loads it
                export.write_translator(models, task.source_dictionary, task.target_dictionary, folder,
                                        quantize=quantize)
                translator = OnnxTranslator(folder, threads=1)
                for beam in (5, 1):
                    label = f"{name}, {'beam 5' if beam == 5 else 'greedy'}{' int8' if quantize else ''}"
                    systems[label] = functools.partial(translator.translate, beam=beam)
    count = min(args.sentences + args.warmup, len(dataset))
    if count <= args.warmup:
        raise SystemExit(f"error: {args.gen_subset} has {len(dataset)} sentences, none left after --warmup "
                         f"{args.warmup}")
    times: Dict[str, List[float]] = {label: [] for label in systems}
    lengths: Dict[str, List[int]] = {label: [] for label in systems}
    with torch.no_grad():
        for i in range(count):
            source = dataset[i]["source"]
            pieces = [src_dict[t] for t in source[:-1].tolist()]
            for label, translator in systems.items():
                start = time.perf_counter()
                out = translator([pieces])
                if i >= args.warmup:
                    times[label].append((time.perf_counter() - start) * 1e3)
                    lengths[label].append(len(out[0][0].pieces))
    order = [label for name in names for decoding in ("beam 5", "beam 5 int8", "greedy", "greedy int8")
             for label in [f"{name}, {decoding}"] if label in systems]
    systems = {label: systems[label] for label in order}
    first = next(iter(systems))
    reference = statistics.median(times[first])
    print(f"single-sentence latency of trained models, {len(times[first])} sentences of {args.gen_subset}, batch 1, "
          f"1 thread, ms per sentence ({first}'s median / this one's)")
    print("| system | median ms | p90 ms | mean target pieces | speed-up |")
    print("|---|---|---|---|---|")
    for label in systems:
        median = statistics.median(times[label])
        print(f"| {label} | {median:.2f} | {percentile(times[label], 0.9):.2f} | "
              f"{statistics.mean(lengths[label]):.1f} | {reference / median:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="fairseq-preprocess output directory")
    parser.add_argument("--source-lang")
    parser.add_argument("--target-lang")
    parser.add_argument("--gen-subset", default="test")
    parser.add_argument("--sentences", type=int, default=1000, help="the first N sentences of the split")
    parser.add_argument("--warmup", type=int, default=5, help="sentences translated first and not counted")
    parser.add_argument("--profile", action="store_true", help="also split a generation step (see above)")
    parser.add_argument("--trained", nargs="+", metavar="NAME=CHECKPOINT[:CHECKPOINT...]",
                        help="time these trained checkpoints' translators instead (see above)")
    parser.add_argument("--quantize", action="store_true", help="--trained: also each one's int8 translator")
    args = parser.parse_args()
    if args.trained and args.profile:
        parser.error("--profile times the untrained matched models: it cannot be used with --trained")
    if args.quantize and not args.trained:
        parser.error("--quantize goes with --trained (the untrained comparison always includes int8)")
    torch.set_num_threads(1)
    if args.trained:
        trained_latency(args)
        return

    from fairseq.sequence_generator import SequenceGenerator

    from fairseq_bahdanau.model import export

    lstm, task = build("lstm (matched)", args)
    ours, _ = build("bahdanau_gru (matched)", args)
    task.load_dataset(args.gen_subset)
    dataset = task.dataset(args.gen_subset)
    count = min(args.sentences + args.warmup, len(dataset))
    src_dict, tgt_dict = task.source_dictionary, task.target_dictionary

    results: Dict[int, Dict[str, List[float]]] = {}
    profiles: Dict[int, Dict[str, Dict[str, float]]] = {}
    for beam in (5, 1):
        generators = {
            "lstm": SequenceGenerator([lstm], tgt_dict, beam_size=beam, max_len_a=0),
            "ours eager": SequenceGenerator([ours], tgt_dict, beam_size=beam, max_len_a=0),
        }
        translators: Dict[str, OnnxTranslator] = {}
        with tempfile.TemporaryDirectory() as tmp:  # the translators as export writes them, loaded back
            for name, quantize in (("translator", False), ("translator int8", True)):
                folder = os.path.join(tmp, f"{name}.onnx".replace(" ", "-"))
                export.write_translator([ours], src_dict, tgt_dict, folder, options={"beam": beam, "max_len_a": 0},
                                        quantize=quantize)
                translators[name] = OnnxTranslator(folder, threads=1)
        runs: Dict[str, Callable] = {name: generators[name].forward for name in SYSTEMS[:2]}
        times: Dict[str, List[float]] = {name: [] for name in SYSTEMS}
        with torch.no_grad():
            for i in range(count):
                item = dataset[i]
                source = item["source"]
                sample = {"net_input": {"src_tokens": source.unsqueeze(0), "src_lengths": torch.tensor([len(source)])}}
                pieces = [src_dict[t] for t in source[:-1].tolist()]
                length = len(item["target"]) - 1
                if args.profile and i == 0:
                    profiles[beam] = {"lstm": profile_step(lstm, generators["lstm"], sample, length),
                                      "ours eager": profile_step(ours, generators["ours eager"], sample, length)}
                for name in SYSTEMS:
                    start = time.perf_counter()
                    if name in translators:
                        translator = translators[name]
                        translator.options = translator.options._replace(min_len=length, max_len_b=length)
                        translator.translate([pieces])
                    else:
                        set_length(generators[name], length)
                        runs[name](sample)
                    if i >= args.warmup:
                        times[name].append((time.perf_counter() - start) * 1e3)
        results[beam] = times

    print(f"single-sentence latency, {len(results[5]['lstm'])} sentences of {args.gen_subset}, batch 1, 1 thread, "
          f"ms per sentence (lstm's median / this one's)")
    print("| system | beam 5 median | beam 5 p90 | vs lstm | greedy median | greedy p90 | vs lstm |")
    print("|---|---|---|---|---|---|---|")
    for name in SYSTEMS:
        cells = []
        for beam in (5, 1):
            median = statistics.median(results[beam][name])
            ratio = statistics.median(results[beam]["lstm"]) / median
            cells += [f"{median:.2f}", f"{percentile(results[beam][name], 0.9):.2f}", f"{ratio:.2f}x"]
        print(f"| {name} | " + " | ".join(cells) + " |")
    for beam, profile in profiles.items():
        for name, parts in profile.items():
            print(f"profile, beam {beam}, {name}: model step {parts['model step']:.3f} ms of a "
                  f"{parts['generation step']:.3f} ms generation step")


if __name__ == "__main__":
    main()
