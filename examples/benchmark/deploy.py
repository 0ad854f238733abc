"""Deployed translators side by side: speed and BLEU of trained checkpoints, text in and text out, one thread.

    python examples/benchmark/deploy.py --data DATA_BIN --spm SPM --source test2016.de --reference test2016.en \\
        --lstm LSTM.pt --ours OURS.pt [--transformer TRANSFORMER.pt] [--sentences N] [--batches 1,32]

Systems, each given the raw lines and returning detokenized lines (sentencepiece's encoding and decoding are
inside every system's time):

* ``fairseq lstm``: fairseq's ``lstm`` checkpoint through fairseq's ``SequenceGenerator`` (eager torch);
* ``ours ONNX`` and ``ours ONNX int8``: the translator it writes now (``python -m fairseq_bahdanau.model.export`` with
  and without ``--quantize``), through ``fairseq_bahdanau.deploy.serve.load`` (ONNX Runtime, numpy search);
* ``transformer CT2`` and ``transformer CT2 int8``: fairseq's ``transformer`` checkpoint converted by
  CTranslate2's fairseq converter (float32 and int8), run by ``ctranslate2.Translator``.

For each batch size (lines translated together) and each of beam 5 and greedy, the systems take turns batch by
batch (so that this machine's drift falls on all of them alike); reported: milliseconds per sentence (median and
90th percentile of a batch's time over its lines), sentences per second over the whole set, and sacreBLEU of the
outputs (cased, detokenized, 13a), with fairseq lstm's median over each system's as the speed-up. Then, per
system, in a fresh process: the time to load it and the resident memory after translating 20 lines.

(The TorchScript translator that the ONNX one replaced was measured beside them by this script at commit
7ea216c, the last one that could still script the model: examples/benchmark/README.md.)
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

Translate = Callable[[List[str], int], List[str]]  # (lines, beam) -> lines


def fairseq_system(path: str, data: str, spm: str) -> Translate:
    """A fairseq checkpoint through fairseq's SequenceGenerator, as fairseq-interactive runs it."""
    import sentencepiece
    import torch
    from fairseq.data import data_utils
    from fairseq.sequence_generator import SequenceGenerator

    from fairseq_bahdanau.model.export import load

    models, task = load([path], data, "de", "en")
    sp = sentencepiece.SentencePieceProcessor(model_file=spm)
    src_dict, tgt_dict = task.source_dictionary, task.target_dictionary
    generators: Dict[int, SequenceGenerator] = {}

    def translate(lines: List[str], beam: int) -> List[str]:
        if beam not in generators:
            generators[beam] = SequenceGenerator(models, tgt_dict, beam_size=beam)
        tokens = [src_dict.encode_line(" ".join(sp.encode(line.strip(), out_type=str)), add_if_not_exist=False)
                  for line in lines]
        order = sorted(range(len(tokens)), key=lambda i: -len(tokens[i]))  # lstm packs longest first
        src = data_utils.collate_tokens([tokens[i] for i in order], src_dict.pad(), left_pad=True)
        with torch.no_grad():
            found = generators[beam].forward({"net_input": {
                "src_tokens": src, "src_lengths": torch.tensor([len(tokens[i]) for i in order])}})
        out = [""] * len(lines)
        for i, hypotheses in zip(order, found):
            out[i] = tgt_dict.string(hypotheses[0]["tokens"]).replace(" ", "").replace("\u2581", " ").strip()
        return out

    return translate


def export_onnx(path: str, data: str, spm: str, quantize: bool, tmp: str) -> str:
    folder = os.path.join(tmp, f"ours{'-int8' if quantize else ''}.onnx")
    subprocess.run([sys.executable, "-m", "fairseq_bahdanau.model.export", "--path", path, "--data", data, "--spm", spm,
                    "--source-lang", "de", "--target-lang", "en", "--output", folder,
                    *(["--quantize"] if quantize else [])], check=True, capture_output=True)
    return folder


def onnx_system(folder: str) -> Translate:
    from fairseq_bahdanau.deploy.serve import load

    translator = load(folder, threads=1)

    def translate(lines: List[str], beam: int) -> List[str]:
        return [t.text for t in translator.details(lines, beam=beam)]

    return translate


def convert_ct2(path: str, data: str, quantize: bool, tmp: str) -> str:
    from ctranslate2.converters import FairseqConverter

    out = os.path.join(tmp, f"ct2{'-int8' if quantize else ''}")
    # the user dir allow-lists exactly the types fairseq's checkpoints hold (weights_only loading stays on)
    FairseqConverter(path, data, user_dir=os.path.join(ROOT, "fairseq_bahdanau"), source_lang="de",
                     target_lang="en").convert(out, quantization="int8" if quantize else None, force=True)
    return out


def ct2_system(model_dir: str, spm: str, quantize: bool) -> Translate:
    import ctranslate2
    import sentencepiece

    translator = ctranslate2.Translator(model_dir, device="cpu", compute_type="int8" if quantize else "float32",
                                        intra_threads=1, inter_threads=1)
    sp = sentencepiece.SentencePieceProcessor(model_file=spm)

    def translate(lines: List[str], beam: int) -> List[str]:
        pieces = [sp.encode(line.strip(), out_type=str) + ["</s>"] for line in lines]
        found = translator.translate_batch(pieces, beam_size=beam, max_batch_size=len(lines))
        return ["".join(r.hypotheses[0]).replace("\u2581", " ").strip() for r in found]

    return translate


def percentile(values: List[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


#: each system's load in a fresh process: (imports, loader expression using ARG)
PROBES = {
    "onnx": ("from fairseq_bahdanau.deploy.serve import load", "t = load(ARG, threads=1); t(LINES)"),
    "ct2": ("import ctranslate2, sentencepiece",
            "t = ctranslate2.Translator(ARG, device='cpu', compute_type=COMPUTE, intra_threads=1); "
            "sp = sentencepiece.SentencePieceProcessor(model_file=SPM); "
            "t.translate_batch([sp.encode(l, out_type=str) + ['</s>'] for l in LINES], beam_size=5)"),
    "fairseq": ("import sys; sys.path.insert(0, HERE); from deploy import fairseq_system",
                "t = fairseq_system(ARG, DATA, SPM); t(LINES, 5)"),
}


def probe(kind: str, arg: str, lines: List[str], spm: str, data: str, compute: str = "float32") -> Dict[str, float]:
    """Load time (s, imports included) and peak resident memory (MB) after translating ``lines``, in a fresh
    process with one thread."""
    imports, body = PROBES[kind]
    code = (f"import json, time; start = time.perf_counter(); HERE = {HERE!r}; ARG = {arg!r}; "
            f"SPM = {spm!r}; DATA = {data!r}; COMPUTE = {compute!r}; LINES = {lines!r}\n{imports}\n"
            f"{body.split('; ')[0]}\nloaded = time.perf_counter() - start\n" + "\n".join(body.split("; ")[1:]) +
            "\nhwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]"
            "\nprint(json.dumps({'load_s': loaded, 'rss_mb': int(hwm) / 1024}))")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"probe {kind} failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--spm", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--reference", required=True)
    parser.add_argument("--lstm", required=True)
    parser.add_argument("--ours", required=True)
    parser.add_argument("--transformer")
    parser.add_argument("--sentences", type=int, default=1000)
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--warmup", type=int, default=3, help="batches translated first and not counted")
    parser.add_argument("--outputs", help="a folder for every system's translations")
    parser.add_argument("--footprint-only", action="store_true", help="only the load time and memory table")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"
    import sacrebleu
    import torch

    torch.set_num_threads(1)
    with open(args.source, encoding="utf-8") as f:
        source = [line.rstrip("\n") for line in f][: args.sentences]
    with open(args.reference, encoding="utf-8") as f:
        reference = [line.rstrip("\n") for line in f][: args.sentences]

    with tempfile.TemporaryDirectory() as tmp:
        systems: Dict[str, Translate] = {"fairseq lstm": fairseq_system(args.lstm, args.data, args.spm)}
        files: Dict[str, tuple] = {"fairseq lstm": ("fairseq", args.lstm, "float32")}
        for quantize in (False, True):
            name = "ours ONNX" + (" int8" if quantize else "")
            folder = export_onnx(args.ours, args.data, args.spm, quantize, tmp)
            systems[name] = onnx_system(folder)
            files[name] = ("onnx", folder, "float32")
        if args.transformer:
            for quantize in (False, True):
                name = "transformer CT2" + (" int8" if quantize else "")
                model_dir = convert_ct2(args.transformer, args.data, quantize, tmp)
                systems[name] = ct2_system(model_dir, args.spm, quantize)
                files[name] = ("ct2", model_dir, "int8" if quantize else "float32")

        print(f"deployed translators, {len(source)} sentences of {os.path.basename(args.source)}, 1 thread, "
              f"CPU: {cpu_name()}")
        for size in [] if args.footprint_only else [int(b) for b in args.batches.split(",")]:
            batches = [source[i: i + size] for i in range(0, len(source), size)]
            for beam in (5, 1):
                times: Dict[str, List[float]] = {name: [] for name in systems}
                totals: Dict[str, float] = {name: 0.0 for name in systems}
                outputs: Dict[str, List[str]] = {name: [] for name in systems}
                for i, lines in enumerate(batches[: args.warmup] + batches):
                    for name, translate in systems.items():
                        start = time.perf_counter()
                        out = translate(lines, beam)
                        elapsed = time.perf_counter() - start
                        if i >= args.warmup:
                            times[name].append(elapsed * 1e3 / len(lines))
                            totals[name] += elapsed
                            outputs[name].extend(out)
                lstm = statistics.median(times["fairseq lstm"])
                print(f"\nbatch {size}, {'beam 5' if beam == 5 else 'greedy'}")
                print("| system | ms per sentence, median | p90 | sentences/s | vs lstm | BLEU |")
                print("|---|---|---|---|---|---|")
                for name in systems:
                    median = statistics.median(times[name])
                    bleu = sacrebleu.corpus_bleu(outputs[name], [reference]).score
                    print(f"| {name} | {median:.2f} | {percentile(times[name], 0.9):.2f} | "
                          f"{len(outputs[name]) / totals[name]:.1f} | {lstm / median:.2f}x | {bleu:.2f} |",
                          flush=True)
                    if args.outputs:
                        os.makedirs(args.outputs, exist_ok=True)
                        label = name.replace(" ", "-")
                        with open(os.path.join(args.outputs, f"{label}.batch{size}.beam{beam}.txt"), "w") as f:
                            f.write("".join(line + "\n" for line in outputs[name]))
                same = sum(a == b for a, b in zip(outputs["ours ONNX"], outputs["ours ONNX int8"]))
                print(f"ours ONNX int8 writes the float32 translation for {same} of {len(source)} lines")

        print("\n| system | load s (fresh process, imports included) | peak RSS MB after 20 lines |")
        print("|---|---|---|")
        for name, (kind, arg, compute) in files.items():
            found = probe(kind, arg, source[:20], args.spm, args.data, compute)
            print(f"| {name} | {found['load_s']:.2f} | {found['rss_mb']:.0f} |", flush=True)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
