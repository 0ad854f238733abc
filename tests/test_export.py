"""The ONNX translator (issue 34): ``python -m fairseq_bahdanau.model.export`` and the runtime that reads it.

* Every variant (each attention type, deeper stacks, each output layer, tied embeddings, layer norm), exported as
  graphs and searched by the numpy port of fairseq's beam search, gives fairseq's ``SequenceGenerator``'s
  hypotheses: the same tokens, scores, positional scores and attention (within float32 rounding), beam 1 and 5,
  one sentence and a padded batch, and the options the runtime implements (``--lenpen``, ``--unkpen``,
  ``--min-len``, ``--max-len-a/b``, ``--no-repeat-ngram-size``, ``--temperature``, n-best lists).
* The exported translator of a trained model (and of an ensemble) writes exactly ``fairseq-interactive``'s ``D-``
  lines, in a process where neither torch nor fairseq can be imported, including an empty line and a line of
  unknown words, one line at a time and in padded batches.
* ``--quantize`` (int8) translates, mostly as float32 does; files that are not translators, and TorchScript
  translators of earlier versions, get a clear message.
"""

import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pytest
import torch
from fairseq.sequence_generator import SequenceGenerator

from helpers import IDS, VARIANTS, pad_batch, random_sentences, run, tool_env, USER_DIR

EXPORTABLE = list(zip(VARIANTS, IDS))  # every variant, layer normalisation included


def write(model, path, **options):
    from fairseq_bahdanau.model.export import write_translator

    write_translator([model], model.encoder.dictionary, model.decoder.dictionary, str(path), options=options)


def assert_same(reference, ours, sentences, width, tolerance=2e-5) -> None:
    """fairseq's hypotheses (left-padded source of ``width``) and the runtime's (right-padded) agree."""
    assert len(reference) == len(ours)
    for sentence, (theirs, mine) in enumerate(zip(reference, ours)):
        assert [h["tokens"].tolist() for h in theirs] == [h.tokens.tolist() for h in mine], sentence
        for a, b in zip(theirs, mine):
            assert abs(float(a["score"]) - b.score) <= tolerance
            np.testing.assert_allclose(a["positional_scores"].numpy(), b.positional_scores, rtol=0, atol=tolerance)
            if b.attention is None:
                assert a["attention"].numel() == 0
            else:
                length = len(sentences[sentence])
                np.testing.assert_allclose(a["attention"][width - length:].numpy(), b.attention[:length],
                                           rtol=0, atol=tolerance)


def compare(model, translator, options, sentences) -> None:
    from fairseq_bahdanau.deploy.search import SearchOptions, generate

    src_dict = model.encoder.dictionary
    lengths = torch.tensor([len(s) for s in sentences])
    fairseq_options = dict(options)
    fairseq_options["len_penalty"] = fairseq_options.pop("lenpen", 1.0)
    fairseq_options["unk_penalty"] = fairseq_options.pop("unkpen", 0.0)
    fairseq_options["beam_size"] = fairseq_options.pop("beam", 5)
    generator = SequenceGenerator([model], model.decoder.dictionary, **fairseq_options)
    with torch.no_grad():
        left = pad_batch(sentences, src_dict.pad(), left=True)
        reference = generator.forward({"net_input": {"src_tokens": left, "src_lengths": lengths}})
    ours = generate(translator.ensemble, pad_batch(sentences, src_dict.pad(), left=False).numpy(), lengths.numpy(),
                    translator.vocabulary, SearchOptions(**options), translator.max_decoder_positions)
    assert_same(reference, ours, sentences, left.size(1))


@pytest.mark.parametrize("variant", [v for v, _ in EXPORTABLE], ids=[i for _, i in EXPORTABLE])
def test_onnx_graphs_and_numpy_search_give_fairseqs_hypotheses(variant, tmp_path):
    from fairseq_bahdanau.deploy.translator import OnnxTranslator
    from helpers import build_model

    model = build_model(**variant)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # nothing deprecated on the export path
        write(model, tmp_path / "t.onnx")
    translator = OnnxTranslator(str(tmp_path / "t.onnx"), threads=1)
    sentences = random_sentences(model.encoder.dictionary, (7, 3, 5, 2), seed=1)
    for beam in (1, 5):
        for batch in (sentences[:1], sentences):
            compare(model, translator, {"beam": beam, "max_len_b": 12}, batch)


def test_search_options_match_fairseqs(tmp_path):
    """lenpen, unkpen, min_len, max_len_a/b, no_repeat_ngram_size and temperature, on a trained-free model whose
    searches end by themselves, by the length limit and by min_len."""
    from fairseq_bahdanau.deploy.translator import OnnxTranslator, _Ensemble
    from helpers import build_model

    model = build_model(attention_type="additive")
    write(model, tmp_path / "t.onnx")
    translator = OnnxTranslator(str(tmp_path / "t.onnx"), threads=1)
    sentences = random_sentences(model.encoder.dictionary, (6, 9, 4), seed=2)
    for options in ({"beam": 4, "lenpen": 0.6, "max_len_b": 9}, {"beam": 3, "unkpen": -2.0, "max_len_b": 7},
                    {"beam": 5, "min_len": 4, "max_len_a": 0.5, "max_len_b": 3},
                    {"beam": 4, "no_repeat_ngram_size": 2, "max_len_b": 10}, {"beam": 2, "max_len_b": 1}):
        compare(model, translator, options, sentences)
    hot = OnnxTranslator(str(tmp_path / "t.onnx"), threads=1)
    hot.ensemble = _Ensemble(hot.models, temperature=0.5)
    compare(model, hot, {"beam": 3, "max_len_b": 8, "temperature": 0.5}, sentences)


def test_ensembles_average_as_fairseqs(tmp_path):
    from fairseq_bahdanau.model.export import write_translator
    from fairseq_bahdanau.deploy.search import SearchOptions, generate
    from fairseq_bahdanau.deploy.translator import OnnxTranslator
    from helpers import build_model

    models = [build_model(attention_type="additive", seed=0), build_model(attention_type="none", seed=1)]
    models[1].encoder.dictionary = models[0].encoder.dictionary
    models[1].decoder.dictionary = models[0].decoder.dictionary
    write_translator(models, models[0].encoder.dictionary, models[0].decoder.dictionary, str(tmp_path / "e.onnx"))
    translator = OnnxTranslator(str(tmp_path / "e.onnx"), threads=1)
    sentences = random_sentences(models[0].encoder.dictionary, (5, 8), seed=3)
    lengths = torch.tensor([len(s) for s in sentences])
    src_dict = models[0].encoder.dictionary
    generator = SequenceGenerator(models, models[0].decoder.dictionary, beam_size=4, max_len_b=10)
    with torch.no_grad():
        left = pad_batch(sentences, src_dict.pad(), left=True)
        reference = generator.forward({"net_input": {"src_tokens": left, "src_lengths": lengths}})
    ours = generate(translator.ensemble, pad_batch(sentences, src_dict.pad(), left=False).numpy(), lengths.numpy(),
                    translator.vocabulary, SearchOptions(beam=4, max_len_b=10), translator.max_decoder_positions)
    assert_same(reference, ours, sentences, left.size(1))


# ------------------------------------------------------------------ the exported translator of a trained model


def interactive_translations(data, paths: str, spm, lines):
    out = run("fairseq-interactive", str(data), "--user-dir", USER_DIR, "--path", paths, "--cpu",
              "--bpe", "sentencepiece", "--sentencepiece-model", str(spm), stdin="".join(line + "\n" for line in lines))
    found = {}
    for line in out.stdout.splitlines():
        if line.startswith("D-"):
            head, _score, text = (line.split("\t") + [""])[:3]
            found[int(head[2:])] = text
    return [found[i] for i in range(len(lines))]


#: runs serve.py with torch and fairseq made unimportable, and fails if anything imported them anyway
WITHOUT_TORCH = (
    "import runpy, sys; sys.modules['torch'] = None; sys.modules['fairseq'] = None; "
    "sys.argv = ['serve'] + sys.argv[1:]; runpy.run_module('fairseq_bahdanau.deploy.serve', run_name='__main__'); "
    "assert not [m for m in sys.modules if m.startswith(('fairseq.', 'torch.'))], 'torch or fairseq was imported'"
)


def serve(translator, lines, *extra):
    proc = subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-c", WITHOUT_TORCH, str(translator),
                           *extra], input="".join(line + "\n" for line in lines), capture_output=True, text=True,
                          env=dict(tool_env(), PYTHONWARNINGS="error::DeprecationWarning"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.splitlines()


@pytest.mark.parametrize("ensemble", [False, True], ids=["single", "ensemble"])
def test_exported_translator_equals_interactive_without_torch(pieces_model, tmp_path, ensemble):
    spm, data, ckpt, raw = pieces_model
    paths = f"{ckpt}/checkpoint_best.pt" + (f":{ckpt}/checkpoint2.pt" if ensemble else "")
    translator = tmp_path / "translator.onnx"
    run(sys.executable, "-m", "fairseq_bahdanau.model.export", "--path", paths, "--data", str(data), "--spm", str(spm),
        "--output", str(translator))
    lines = (raw / "test.src").read_text().splitlines()[:12]
    lines[3:3] = ["", "QQQ 1234 ÄÖÜ xx", "   "]  # empty, all pieces unknown, all blank
    expected = interactive_translations(data, paths, spm, lines)
    expected[3] = expected[5] = ""  # blank lines: nothing, where fairseq-interactive invents a sentence
    assert serve(translator, lines) == expected
    assert serve(translator, lines, "--batch-size", "4") == expected  # batches of 4 (padded): the same, every line
    assert max(len(text.split()) for text in expected) > 3 and len(set(expected)) > 5  # real, varied translations
    archive = tmp_path / "translator.zip"  # the folder's files in one zip archive translate the same
    with zipfile.ZipFile(archive, "w") as z:
        for f in translator.iterdir():
            z.write(f, f"translator.onnx/{f.name}")
    assert serve(archive, lines[:4]) == expected[:4]


def test_translator_in_python_int8_and_bad_files(pieces_model, tmp_path):
    spm, data, ckpt, raw = pieces_model
    translator = tmp_path / "translator.onnx"
    run(sys.executable, "-m", "fairseq_bahdanau.model.export", "--path", f"{ckpt}/checkpoint_best.pt", "--data",
        str(data), "--spm", str(spm), "--output", str(translator), "--beam", "1")
    from fairseq_bahdanau.deploy.serve import load

    line = (raw / "test.src").read_text().splitlines()[0]
    translate = load(str(translator))
    short = (raw / "test.src").read_text().splitlines()[1]
    assert len(short.split()) != len(line.split())  # so that the batch is padded
    assert translate([line, short, "", line]) == translate([line]) + translate([short]) + [""] + translate([line])
    assert translate([]) == []
    assert translate.meta["generation"] == {"beam": 1}

    # --quantize (int8 weights of every matrix): translates, mostly as float32 does on this model
    int8 = tmp_path / "int8.onnx"
    run(sys.executable, "-m", "fairseq_bahdanau.model.export", "--path", f"{ckpt}/checkpoint_best.pt", "--data",
        str(data), "--spm", str(spm), "--output", str(int8), "--beam", "1", "--quantize")
    lines = (raw / "test.src").read_text().splitlines()[:10]
    quantized = load(str(int8))
    assert quantized.meta["quantized"] and not translate.meta["quantized"]
    same = sum(a == b for a, b in zip(quantized(lines), translate(lines)))
    assert same >= 5, f"the int8 translator agrees with float32 on only {same} of 10 sentences"
    sizes = [(folder / "model0.step.onnx").stat().st_size for folder in (translator, int8)]
    assert sizes[1] < 0.5 * sizes[0]  # the step's weights are int8

    def refused(path, message):
        proc = subprocess.run([sys.executable, "-m", "fairseq_bahdanau.deploy.serve", str(path)], input="x\n",
                              capture_output=True, text=True, env=tool_env())
        assert proc.returncode == 1 and message in proc.stderr, proc.stderr[-2000:]

    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"not a translator")
    refused(bogus, "not a translator written by fairseq_bahdanau.model.export")
    refused(tmp_path / "nowhere.onnx", "no translator at")
    old = tmp_path / "old.pt"  # what torch.jit.save wrote for earlier versions: a zip with extra/translator.json
    with zipfile.ZipFile(old, "w") as z:
        z.writestr("old/extra/translator.json", "{}")
        z.writestr("old/constants.pkl", b"")
    refused(old, "TorchScript translator from an earlier version")
    refused(old, "python -m fairseq_bahdanau.model.export")
    missing = run(sys.executable, "-m", "fairseq_bahdanau.model.export", "--path", str(tmp_path / "nope.pt"), "--data",
                  str(data), "--output", str(tmp_path / "t.onnx"), check=False)
    assert missing.returncode != 0 and "no such file" in missing.stderr
    assert not (tmp_path / "t.onnx").exists()
    clash = tmp_path / "file.onnx"
    clash.write_text("keep me")
    taken = run(sys.executable, "-m", "fairseq_bahdanau.model.export", "--path", f"{ckpt}/checkpoint_best.pt", "--data",
                str(data), "--output", str(clash), check=False)
    assert taken.returncode == 1 and "exists and is not a translator folder" in taken.stderr
    assert clash.read_text() == "keep me" and not list(tmp_path.glob("file.onnx.*"))


def test_latency_benchmark_times_trained_translators(pieces_model):
    """examples/benchmark/latency.py --trained: every checkpoint (and an ensemble) exported as ONNX at beam 5 and
    greedy, with its int8 twin, timed on real sentences; a missing checkpoint is named."""
    import os

    from helpers import ROOT

    spm, data, ckpt, raw = pieces_model
    script = os.path.join(ROOT, "examples", "benchmark", "latency.py")
    proc = run(sys.executable, script, "--data", str(data), "--sentences", "4", "--warmup", "1", "--quantize",
               "--trained", f"one={ckpt}/checkpoint_best.pt", f"two={ckpt}/checkpoint_best.pt:{ckpt}/checkpoint2.pt")
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| one") or line.startswith("| two")]
    assert [row.split(" | ")[0] for row in rows] == [
        f"| {name}, {decoding}" for name in ("one", "two")
        for decoding in ("beam 5", "beam 5 int8", "greedy", "greedy int8")]
    assert rows[0].endswith("| 1.00x |") and "4 sentences of test" in proc.stdout
    assert all(float(row.split(" | ")[3]) > 0 for row in rows)  # translations of some length
    missing = run(sys.executable, script, "--data", str(data), "--trained", f"x={ckpt}/nope.pt", check=False)
    assert missing.returncode != 0 and f"--trained x: no checkpoint at {ckpt}/nope.pt" in missing.stderr
    twice = run(sys.executable, script, "--data", str(data), "--trained", f"x={ckpt}/checkpoint_best.pt",
                f"x={ckpt}/checkpoint2.pt", check=False)
    assert twice.returncode != 0 and "--trained names 'x' twice" in twice.stderr


def test_the_search_over_each_rows_best_tokens_equals_the_search_over_the_vocabulary(tmp_path):
    """With a vocabulary larger than the step graph's ranked tokens (graphs.TOP), the search reads each
    hypothesis's best tokens and its unk and end-of-sentence columns (``_top_candidates``): fairseq's hypotheses,
    for the beams and the adjustments (unk penalties of both signs, min_len, the length limit) that touch them."""
    import argparse

    from fairseq.models import ARCH_CONFIG_REGISTRY

    from fairseq_bahdanau.model.graphs import TOP
    from fairseq_bahdanau.model.bahdanau_gru import BahdanauGRUModel
    from fairseq_bahdanau.deploy.translator import OnnxTranslator
    from helpers import DummyTask, dictionary

    torch.manual_seed(4)
    args = argparse.Namespace()
    ARCH_CONFIG_REGISTRY["bahdanau_gru_tiny"](args)
    model = BahdanauGRUModel.build_model(args, DummyTask(dictionary(30), dictionary(300))).eval()
    with torch.no_grad():  # a peaked output layer, so that the searches are not near ties everywhere
        model.decoder.output_projection.weight.mul_(8.0)
    assert len(model.decoder.dictionary) > 4 * TOP
    write(model, tmp_path / "t.onnx")
    translator = OnnxTranslator(str(tmp_path / "t.onnx"), threads=1)
    sentences = random_sentences(model.encoder.dictionary, (6, 9, 4), seed=5)
    for options in ({"beam": 5, "max_len_b": 10}, {"beam": 16, "max_len_b": 8}, {"beam": 1, "max_len_b": 12},
                    {"beam": 4, "unkpen": -30.0, "max_len_b": 6}, {"beam": 4, "unkpen": 3.0, "max_len_b": 6},
                    {"beam": 6, "min_len": 5, "max_len_b": 7}):
        compare(model, translator, options, sentences)
