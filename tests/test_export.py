"""TorchScript and the exported translator (issue 16), in the manner of fairseq's own tests/test_export.py.

* ``torch.jit.script(model)`` and ``torch.jit.script(SequenceGenerator([model], ...))`` work for every variant,
  and scripted generation equals eager generation (hypotheses, and scores within 1e-5), beam 1 and 5, batch 1 and a
  padded batch; the scripted teacher-forced forward equals the eager one.
* ``python -m fairseq_bahdanau.export`` writes one file that ``python -m fairseq_bahdanau.serve`` translates with,
  in a process where fairseq cannot be imported, and its output equals ``fairseq-interactive``'s (``D-`` lines) for
  the same checkpoint (and an ensemble), including an empty line and a line of unknown words.
"""

import subprocess
import sys

import pytest
import torch
from fairseq.sequence_generator import SequenceGenerator

from helpers import IDS, USER_DIR, VARIANTS, batch, build_model, pad_batch, random_sentences, run, tool_env


def generate(generator, src_tokens, src_lengths):
    with torch.no_grad():
        return generator.forward({"net_input": {"src_tokens": src_tokens, "src_lengths": src_lengths}})


def assert_same_hypotheses(eager, scripted) -> None:
    assert len(eager) == len(scripted)
    for sentence, (ours, theirs) in enumerate(zip(eager, scripted)):
        assert len(ours) == len(theirs), sentence
        for a, b in zip(ours, theirs):
            assert a["tokens"].tolist() == b["tokens"].tolist(), sentence
            assert abs(float(a["score"]) - float(b["score"])) <= 1e-5
            torch.testing.assert_close(a["positional_scores"], b["positional_scores"], rtol=0, atol=1e-5)
            if a["attention"] is not None and a["attention"].numel():
                torch.testing.assert_close(a["attention"], b["attention"], rtol=0, atol=1e-5)


def source_batches(model):
    """A single sentence and a left-padded batch of four (fairseq's translation task pads on the left)."""
    src_dict = model.encoder.dictionary
    sentences = random_sentences(src_dict, (7, 3, 5, 2), seed=1)
    lengths = torch.tensor([len(s) for s in sentences])
    return [(pad_batch(sentences[:1], src_dict.pad(), left=True), lengths[:1]),
            (pad_batch(sentences, src_dict.pad(), left=True), lengths)]


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_scripted_model_and_generator_equal_eager(variant):
    model = build_model(**variant)
    scripted_model = torch.jit.script(model)
    _, src, lengths, prev = batch(model)
    with torch.no_grad():
        eager_logits, eager_extra = model(src, lengths, prev)
        logits, extra = scripted_model(src, lengths, prev)
    torch.testing.assert_close(logits, eager_logits, rtol=0, atol=1e-5)
    if eager_extra["attn"][0] is not None:
        torch.testing.assert_close(extra["attn"][0], eager_extra["attn"][0], rtol=0, atol=1e-6)
    for beam in (1, 5):
        generator = SequenceGenerator([model], model.decoder.dictionary, beam_size=beam, max_len_b=12)
        scripted = torch.jit.script(generator)
        for src_tokens, src_lengths in source_batches(model):
            assert_same_hypotheses(generate(generator, src_tokens, src_lengths),
                                   generate(scripted, src_tokens, src_lengths))


def test_scripted_generator_of_the_trained_model_equals_eager(synthetic):
    from fairseq import checkpoint_utils

    models, _, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(synthetic.best)], arg_overrides={"data": str(synthetic.bin)})
    model = models[0].eval()
    lines = (synthetic.raw / "test.src").read_text().splitlines()[:6]
    sentences = [task.source_dictionary.encode_line(line, add_if_not_exist=False).tolist() for line in lines]
    lengths = torch.tensor([len(s) for s in sentences])
    padded = pad_batch(sentences, task.source_dictionary.pad(), left=True)
    for beam in (1, 5):
        generator = SequenceGenerator([model], task.target_dictionary, beam_size=beam)
        scripted = torch.jit.script(generator)
        for src_tokens, src_lengths in ((padded[:1, -lengths[0]:], lengths[:1]), (padded, lengths)):
            eager = generate(generator, src_tokens, src_lengths)
            assert_same_hypotheses(eager, generate(scripted, src_tokens, src_lengths))
            assert all(len(h[0]["tokens"]) > 3 for h in eager)  # real translations, not an immediate end


# ------------------------------------------------------------------ the exported translator


def interactive_translations(data, paths: str, spm, lines):
    out = run("fairseq-interactive", str(data), "--user-dir", USER_DIR, "--path", paths, "--cpu",
              "--bpe", "sentencepiece", "--sentencepiece-model", str(spm), stdin="".join(l + "\n" for l in lines))
    found = {}
    for line in out.stdout.splitlines():
        if line.startswith("D-"):
            head, _score, text = (line.split("\t") + [""])[:3]
            found[int(head[2:])] = text
    return [found[i] for i in range(len(lines))]


#: runs serve.py with fairseq made unimportable, and fails if anything imported it anyway
WITHOUT_FAIRSEQ = (
    "import runpy, sys; sys.modules['fairseq'] = None; sys.argv = ['serve'] + sys.argv[1:]; "
    "runpy.run_module('fairseq_bahdanau.serve', run_name='__main__'); "
    "assert not [m for m in sys.modules if m.startswith('fairseq.')], 'fairseq was imported'"
)


def serve(translator, lines, *extra):
    proc = subprocess.run([sys.executable, "-c", WITHOUT_FAIRSEQ, str(translator), *extra],
                          input="".join(l + "\n" for l in lines), capture_output=True, text=True, env=tool_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.splitlines()


@pytest.mark.parametrize("ensemble", [False, True], ids=["single", "ensemble"])
def test_exported_translator_equals_interactive_without_fairseq(pieces_model, tmp_path, ensemble):
    spm, data, ckpt, raw = pieces_model
    paths = f"{ckpt}/checkpoint_best.pt" + (f":{ckpt}/checkpoint2.pt" if ensemble else "")
    translator = tmp_path / "translator.pt"
    run(sys.executable, "-m", "fairseq_bahdanau.export", "--path", paths, "--data", str(data), "--spm", str(spm),
        "--output", str(translator))
    lines = (raw / "test.src").read_text().splitlines()[:8]
    lines[3:3] = ["", "QQQ 1234 ÄÖÜ xx", "   "]  # empty, all pieces unknown, all blank
    expected = interactive_translations(data, paths, spm, lines)
    expected[3] = expected[5] = ""  # blank lines: nothing, where fairseq-interactive invents a sentence
    assert serve(translator, lines) == expected
    assert serve(translator, lines, "--batch-size", "4") == expected  # batches of 4 (padded): the same, every line
    assert max(len(text.split()) for text in expected) > 3 and len(set(expected)) > 5  # real, varied translations


def test_translator_in_python_and_bad_files(pieces_model, tmp_path):
    spm, data, ckpt, raw = pieces_model
    translator = tmp_path / "translator.pt"
    run(sys.executable, "-m", "fairseq_bahdanau.export", "--path", f"{ckpt}/checkpoint_best.pt", "--data",
        str(data), "--spm", str(spm), "--output", str(translator), "--beam", "1")
    from fairseq_bahdanau.serve import load

    line = (raw / "test.src").read_text().splitlines()[0]
    translate = load(str(translator))
    short = (raw / "test.src").read_text().splitlines()[1]
    assert len(short.split()) != len(line.split())  # so that the batch is padded
    assert translate([line, short, "", line]) == translate([line]) + translate([short]) + [""] + translate([line])
    assert translate([]) == []
    assert translate.meta["generation"] == {"beam": 1}

    # --quantize (int8 output layer): translates, mostly as float32 does on this model
    int8 = tmp_path / "int8.pt"
    run(sys.executable, "-m", "fairseq_bahdanau.export", "--path", f"{ckpt}/checkpoint_best.pt", "--data",
        str(data), "--spm", str(spm), "--output", str(int8), "--beam", "1", "--quantize")
    lines = (raw / "test.src").read_text().splitlines()[:10]
    quantized = load(str(int8))
    assert quantized.meta["quantized"] and not translate.meta["quantized"]
    same = sum(a == b for a, b in zip(quantized(lines), translate(lines)))
    assert same >= 5, f"the int8 translator agrees with float32 on only {same} of 10 sentences"

    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"not a translator")
    proc = subprocess.run([sys.executable, "-m", "fairseq_bahdanau.serve", str(bogus)], input="x\n",
                          capture_output=True, text=True, env=tool_env())
    assert proc.returncode == 1 and "not a translator written by fairseq_bahdanau.export" in proc.stderr
    missing = run(sys.executable, "-m", "fairseq_bahdanau.export", "--path", str(tmp_path / "nope.pt"), "--data",
                  str(data), "--output", str(tmp_path / "t.pt"), check=False)
    assert missing.returncode != 0 and "no such file" in missing.stderr
    assert not (tmp_path / "t.pt").exists()


def test_latency_benchmark_times_trained_translators(pieces_model):
    """examples/benchmark/latency.py --trained: every checkpoint (and an ensemble) exported at beam 5 and greedy,
    with its int8 twin, timed on real sentences; a missing checkpoint is named."""
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
