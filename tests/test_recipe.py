"""The Multi30k recipe: its sentencepiece helper (``examples/multi30k/spm.py``: the sampled segmentations of
subword regularization are true segmentations of each line, vary, and are the same for the same seed) and the
error paths of ``train.sh`` and ``evaluate.sh`` (with stand-ins for ``python`` and ``fairseq-train``)."""

import os
import subprocess

import pytest

from fairseq_bahdanau.synthetic import write_corpus
from helpers import ROOT, run

SPM = os.path.join(ROOT, "examples", "multi30k", "spm.py")
RECIPE = os.path.join(ROOT, "examples", "multi30k")


def spm(*args: str, stdin: str) -> str:
    """stdout of ``python spm.py ARGS < stdin``."""
    return run("python", SPM, *args, stdin=stdin).stdout


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """(sentencepiece model path, 200 lines of text) for a small unigram model trained on the synthetic corpus."""
    root = tmp_path_factory.mktemp("spm")
    write_corpus(str(root / "raw"), train=500, valid=10, test=10, seed=5)
    spm("train", str(root / "m"), "100", str(root / "raw/train.src"), str(root / "raw/train.tgt"), stdin="")
    lines = (root / "raw/train.src").read_text().splitlines()[:199] + [""]  # an empty line too
    return str(root / "m.model"), "\n".join(lines) + "\n"


def test_samples_are_segmentations_of_each_line(model):
    path, text = model
    viterbi = spm("encode", path, stdin=text).splitlines()
    sampled = spm("sample", path, "1", stdin=text).splitlines()
    assert len(sampled) == len(viterbi) == 200
    assert sampled[-1] == ""
    # every sample decodes to its line, as the usual segmentation does
    assert spm("decode", path, stdin="\n".join(sampled) + "\n") == spm("decode", path, stdin="\n".join(viterbi) + "\n")
    changed = sum(s != v for s, v in zip(sampled, viterbi))
    assert changed > 50, changed
    # the usual segmentation is the most probable one, so samples are longer on average, not shorter
    assert sum(len(s.split()) for s in sampled) > sum(len(v.split()) for v in viterbi)


def test_samples_depend_on_the_seed_only(model):
    path, text = model
    first = spm("sample", path, "1", stdin=text)
    assert spm("sample", path, "1", stdin=text) == first
    assert spm("sample", path, "2", stdin=text) != first
    # alpha -> 0 samples uniformly from the 64 best; a large alpha gives the usual segmentation
    assert spm("sample", path, "1", "64", "50", stdin=text) == spm("encode", path, stdin=text)


@pytest.fixture
def work(tmp_path):
    """A WORK directory with a data-bin (only its dictionary: nothing here reads more) and a bin directory of
    stand-ins: ``python`` prints $FAST_BF16 (what train.sh asks fast_bfloat16_cpu), ``fairseq-train`` fails."""
    (tmp_path / "data-bin").mkdir()
    (tmp_path / "data-bin" / "dict.de.txt").write_text("a 1\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text('#!/bin/sh\necho "$FAST_BF16"\n')
    (bin_dir / "fairseq-train").write_text('#!/bin/sh\necho "a traceback, then: boom"\nexit 3\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    return tmp_path


def script(work, name: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    """``bash examples/multi30k/NAME ARGS`` with WORK=work and the stand-ins first on PATH."""
    environ = dict(os.environ, WORK=str(work), PATH=f"{work / 'bin'}:{os.environ['PATH']}", FAST_BF16="True")
    environ.update(env)
    return subprocess.run(
        ["bash", os.path.join(RECIPE, name), *args], capture_output=True, text=True, env=environ, timeout=60
    )


def test_train_sh_refuses_save_dir_and_unknown_configurations(work):
    proc = script(work, "train.sh", "best", "--save-dir", "elsewhere")
    assert proc.returncode == 1 and "set RUN_NAME instead of --save-dir" in proc.stderr
    proc = script(work, "train.sh", "bestt")
    assert proc.returncode == 1 and "unknown configuration bestt" in proc.stderr
    assert not (work / "checkpoints").exists()  # nothing made for a run that did not start


def test_train_sh_transformer_is_fairseqs_own_in_float32(work):
    proc = script(work, "train.sh", "transformer", FAST_BF16="True")
    command = next(line for line in proc.stdout.splitlines() if line.startswith("fairseq-train"))
    assert "--arch transformer --share-all-embeddings" in command and "--stop-time-hours 1.45" in command
    assert "--autocast-bf16" not in command and "precision: float32" in proc.stdout


def test_train_sh_without_data_says_run_prepare_first(tmp_path):
    proc = script(tmp_path, "train.sh", "best")
    assert proc.returncode == 1 and "run prepare.sh first" in proc.stderr


def test_train_sh_refuses_bfloat16_on_cpus_without_it(work):
    proc = script(work, "train.sh", "best-e512", FAST_BF16="False")
    assert proc.returncode == 1 and "slower than float32" in proc.stderr and "train best instead" in proc.stderr
    proc = script(work, "train.sh", "best", "--autocast-bf16", FAST_BF16="False")  # the flag passed on, too
    assert proc.returncode == 1 and "slower than float32" in proc.stderr


@pytest.mark.parametrize("fast, precision, bf16", [("True", "", True), ("False", "", False), ("True", "fp32", False)])
def test_train_sh_best_uses_bfloat16_where_it_is_fast(work, fast, precision, bf16):
    env = {"FAST_BF16": fast, **({"PRECISION": precision} if precision else {})}
    proc = script(work, "train.sh", "best", **env)
    assert "fairseq-train failed" in proc.stderr  # it got as far as starting the (stand-in) fairseq-train
    command = next(line for line in proc.stdout.splitlines() if line.startswith("fairseq-train"))
    assert ("--autocast-bf16" in command) == bf16
    assert ("precision: bfloat16 autocast" if bf16 else "precision: float32") in proc.stdout
    proc = script(work, "train.sh", "best", PRECISION="fp16")
    assert proc.returncode == 1 and "PRECISION must be auto, fp32 or bf16" in proc.stderr


def test_train_sh_shows_why_fairseq_train_failed(work):
    """The console shows only epoch summaries; a failure shows the end of train.log, and the options passed
    after the configuration reach fairseq-train, in RUN_NAME's directory."""
    proc = script(work, "train.sh", "best-e512", "--dropout", "0.4", RUN_NAME="variant")
    assert proc.returncode == 1
    assert "fairseq-train failed" in proc.stderr and "boom" in proc.stderr
    assert "--autocast-bf16" in proc.stdout and proc.stdout.rstrip().endswith("--dropout 0.4")
    assert (work / "checkpoints" / "variant" / "train.log").read_text().strip().endswith("boom")


def test_evaluate_sh_checks_split_and_run(work):
    proc = script(work, "evaluate.sh", "best", "test2016")
    assert proc.returncode == 1 and "unknown split test2016 (test or valid)" in proc.stderr
    proc = script(work, "evaluate.sh", "best", RUN_NAME="nope")
    assert proc.returncode == 1 and "checkpoints/nope is missing" in proc.stderr and "RUN_NAME" in proc.stderr


def test_evaluate_sh_ensembles_the_runs_named_in_ensemble(work):
    """ENSEMBLE adds runs: each one's checkpoint goes to one fairseq-generate --path and the outputs to RUN+OTHER
    (a single run's to its own directory); a missing, repeated or blank run name is refused with its name."""
    proc = script(work, "evaluate.sh", "tutorial", RUN_NAME="a", ENSEMBLE="b")
    assert proc.returncode == 1 and "checkpoints/a is missing" in proc.stderr
    for run in "a", "b":
        (work / "checkpoints" / run).mkdir(parents=True)
        (work / "checkpoints" / run / "checkpoint_best.pt").write_text("")
    proc = script(work, "evaluate.sh", "tutorial", RUN_NAME="a", ENSEMBLE="b c")
    assert proc.returncode == 1 and "checkpoints/c (named in ENSEMBLE) is missing" in proc.stderr
    proc = script(work, "evaluate.sh", "tutorial", RUN_NAME="a", ENSEMBLE="b a")
    assert proc.returncode == 1 and "a run is named twice" in proc.stderr
    proc = script(work, "evaluate.sh", "tutorial", RUN_NAME=" ")
    assert proc.returncode == 1 and "RUN_NAME is blank" in proc.stderr
    (work / "bin" / "fairseq-generate").write_text('#!/bin/sh\necho "fairseq-generate $*" >&2\nexit 3\n')
    (work / "bin" / "fairseq-generate").chmod(0o755)
    checkpoint = "{}/checkpoints/{}/checkpoint_best.pt".format
    proc = script(work, "evaluate.sh", "tutorial", "valid", RUN_NAME="a", ENSEMBLE="b")
    assert proc.returncode == 1 and "fairseq-generate failed" in proc.stderr
    log = (work / "checkpoints" / "a+b" / "valid.beam5.log").read_text()
    assert f"--path {checkpoint(work, 'a')}:{checkpoint(work, 'b')} " in log
    proc = script(work, "evaluate.sh", "tutorial", "valid", RUN_NAME="a")
    assert proc.returncode == 1 and "fairseq-generate failed" in proc.stderr
    assert f"--path {checkpoint(work, 'a')} " in (work / "checkpoints" / "a" / "valid.beam5.log").read_text()
