"""The Multi30k recipe: its sentencepiece helper (``examples/multi30k/spm.py``: the sampled segmentations of
subword regularization are true segmentations of each line, vary, and are the same for the same seed) and the
error paths of ``train.sh`` and ``evaluate.sh`` (with stand-ins for ``python`` and ``fairseq-train``)."""

import os
import re
import shutil
import subprocess
import sys

import pytest

from fairseq_bahdanau.analysis.synthetic import write_corpus
from helpers import BIN, ROOT, TRAIN, USER_DIR, run

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
    proc = script(work, "train.sh", "transformer", "--bf16")
    assert "precision: bfloat16 (fairseq's --bf16" in proc.stdout


def test_train_sh_without_data_says_run_prepare_first(tmp_path):
    proc = script(tmp_path, "train.sh", "best")
    assert proc.returncode == 1 and "run prepare.sh first" in proc.stderr
    proc = script(tmp_path, "train.sh", "best", DATA_BIN=str(tmp_path / "data-bin-distill"))
    assert proc.returncode == 1 and "DATA_BIN" in proc.stderr and "distill.sh" in proc.stderr


def test_train_sh_trains_on_data_bin(work):
    proc = script(work, "train.sh", "best-sr", DATA_BIN=str(work / "data-bin"))
    assert proc.returncode == 1 and "DATA_BIN cannot be used" in proc.stderr
    (work / "distilled").mkdir()
    (work / "distilled" / "dict.de.txt").write_text("a 1\n")
    proc = script(work, "train.sh", "best", DATA_BIN=str(work / "distilled"), RUN_NAME="student")
    command = next(line for line in proc.stdout.splitlines() if line.startswith("fairseq-train"))
    assert command.startswith(f"fairseq-train {work / 'distilled'} ") and "checkpoints/student" in command


def test_train_sh_starts_from_init(work):
    """INIT: a missing checkpoint is refused before anything is made; a present one goes to fairseq-train as
    --finetune-from-model by way of init_checkpoint.py's copy in the run's directory."""
    proc = script(work, "train.sh", "best", INIT=str(work / "nope.pt"), RUN_NAME="warm")
    assert proc.returncode == 1 and f"INIT {work / 'nope.pt'} is missing" in proc.stderr
    assert not (work / "checkpoints").exists()
    (work / "old.pt").write_text("")
    proc = script(work, "train.sh", "best", INIT=str(work / "old.pt"), RUN_NAME="warm")
    command = next(line for line in proc.stdout.splitlines() if line.startswith("fairseq-train"))
    assert f"--finetune-from-model {work / 'checkpoints' / 'warm' / 'init.pt'}" in command


def test_init_checkpoint_restarts_the_training_clock(pieces_model, tmp_path):
    """fairseq's --finetune-from-model keeps the checkpoint's training clock, so --stop-time-hours counts the
    earlier run's time (unfixed: a run from a one-hour checkpoint with a half-hour budget stops after one
    update); init_checkpoint.py's copy has the same weights and a clock at zero, and trains to --max-update."""
    import torch

    from fairseq_bahdanau import register

    register()
    _, data, checkpoints, _ = pieces_model
    state = torch.load(checkpoints / "checkpoint_last.pt", map_location="cpu")
    state["extra_state"]["previous_training_time"] = 3600.0  # an hour-long earlier run
    torch.save(state, tmp_path / "old.pt")
    run("python", os.path.join(RECIPE, "init_checkpoint.py"), str(tmp_path / "old.pt"), str(tmp_path / "init.pt"))
    init = torch.load(tmp_path / "init.pt", map_location="cpu")
    assert init["extra_state"]["previous_training_time"] == 0 and init["last_optimizer_state"] is None
    assert all(torch.equal(init["model"][k], v) for k, v in state["model"].items())

    def updates(start: str, name: str) -> int:
        proc = run("fairseq-train", str(data), "--user-dir", USER_DIR, "--arch", "bahdanau_gru_tiny",
                   "--finetune-from-model", start, "--stop-time-hours", "0.5", "--max-update", "4",
                   "--save-dir", str(tmp_path / name), "--no-save", *TRAIN)
        return int(re.findall(r"num_updates (\d+)", proc.stdout + proc.stderr)[-1])

    assert updates(str(tmp_path / "old.pt"), "unfixed") == 1
    assert updates(str(tmp_path / "init.pt"), "fixed") == 4


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
    assert proc.returncode == 1 and "unknown split test2016 (test, valid, train or blind)" in proc.stderr
    proc = script(work, "evaluate.sh", "best", RUN_NAME="nope")
    assert proc.returncode == 1 and "checkpoints/nope is missing" in proc.stderr and "RUN_NAME" in proc.stderr


def test_evaluate_sh_ensembles_the_runs_named_in_ensemble(work):
    """ENSEMBLE adds runs: each one's checkpoint goes to one fairseq-generate --path and the outputs to RUN+OTHER
    (a single run's to its own directory); a missing, repeated or blank run name is refused with its name."""
    proc = script(work, "evaluate.sh", "tutorial", RUN_NAME="a", ENSEMBLE="b")
    assert proc.returncode == 1 and "checkpoints/a is missing" in proc.stderr
    for name in "a", "b":
        (work / "checkpoints" / name).mkdir(parents=True)
        (work / "checkpoints" / name / "checkpoint_best.pt").write_text("")
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
    proc = script(work, "evaluate.sh", "best", "valid", RUN_NAME="a", EPOCH="3")  # one epoch's checkpoint
    assert proc.returncode == 1 and "checkpoint3.pt is missing" in proc.stderr
    (work / "checkpoints" / "a" / "checkpoint3.pt").write_text("")
    proc = script(work, "evaluate.sh", "best", "valid", RUN_NAME="a", EPOCH="3")
    assert proc.returncode == 1 and "fairseq-generate failed" in proc.stderr
    log = (work / "checkpoints" / "a" / "valid.beam5.epoch3.log").read_text()
    assert f"--path {work}/checkpoints/a/checkpoint3.pt " in log


@pytest.fixture
def recipe_work(pieces_model, tmp_path):
    """A WORK directory as prepare.sh leaves it, made from the shared pieces model's corpus (src -> de, tgt -> en,
    test -> test2016), with that model as the run ``teacher``."""
    spm_model, data, checkpoints, raw = pieces_model
    seg = spm_model.parent / "seg"
    for folder in "raw", "pieces", "data-bin", "checkpoints/teacher":
        (tmp_path / folder).mkdir(parents=True)
    for split, name in ("train", "train"), ("valid", "valid"), ("test", "test2016"):
        for side, lang in ("src", "de"), ("tgt", "en"):
            shutil.copy(raw / f"{split}.{side}", tmp_path / "raw" / f"{name}.{lang}")
            shutil.copy(seg / f"{split}.{side}", tmp_path / "pieces" / f"{name}.{lang}")
    for name in os.listdir(data):  # fairseq's file names, with the languages renamed
        renamed = name.replace("src-tgt", "de-en").replace(".src.", ".de.").replace(".tgt.", ".en.")
        shutil.copy(data / name, tmp_path / "data-bin" / renamed)
    shutil.copy(spm_model, tmp_path / "spm.model")
    shutil.copy(checkpoints / "checkpoint_best.pt", tmp_path / "checkpoints" / "teacher" / "checkpoint_best.pt")
    return tmp_path


def test_distill_sh_binarizes_the_teachers_translations_once(recipe_work):
    """distill.sh translates the training source with the teacher (real fairseq-generate), keeps the pieces, and
    binarizes them as the training targets with data-bin's dictionary; MIX=1 adds the references, reusing the
    cached translations (a failing fairseq-generate first on PATH proves it is not called again)."""
    from fairseq.data import Dictionary, data_utils

    environ = dict(os.environ, WORK=str(recipe_work), CONFIG="tutorial", PATH=f"{BIN}:{os.environ['PATH']}")
    distill = ["bash", os.path.join(RECIPE, "distill.sh"), "teacher"]
    proc = subprocess.run(distill, capture_output=True, text=True, env=environ, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "translates the 1500 training sentences" in proc.stdout and "1500 training pairs" in proc.stdout
    pieces = (recipe_work / "checkpoints" / "teacher" / "train.beam5.pieces").read_text().splitlines()
    references = (recipe_work / "pieces" / "train.en").read_text().splitlines()
    assert len(pieces) == 1500 and pieces != references

    def targets(dest):
        dictionary = Dictionary.load(str(dest / "dict.en.txt"))
        dataset = data_utils.load_indexed_dataset(str(dest / "train.de-en.en"), dictionary)
        return [dictionary.string(dataset[i][:-1]) for i in range(len(dataset))]  # without </s>

    assert targets(recipe_work / "data-bin-distill") == pieces
    assert (recipe_work / "data-bin-distill" / "valid.de-en.en.bin").read_bytes() == \
        (recipe_work / "data-bin" / "valid.de-en.en.bin").read_bytes()

    (recipe_work / "bin").mkdir()
    (recipe_work / "bin" / "fairseq-generate").write_text("#!/bin/sh\necho called >&2\nexit 3\n")
    (recipe_work / "bin" / "fairseq-generate").chmod(0o755)
    # evaluate.sh's defaults given explicitly are the same key
    environ.update(MIX="1", LENPEN="1.0", AVERAGE="0", PATH=f"{recipe_work / 'bin'}:{environ['PATH']}")
    proc = subprocess.run(distill, capture_output=True, text=True, env=environ, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "there already" in proc.stdout and "3000 training pairs" in proc.stdout
    assert "DATA_BIN=" + str(recipe_work / "data-bin-distill-mix") in proc.stdout
    assert targets(recipe_work / "data-bin-distill-mix") == pieces + references
    teacher = recipe_work / "checkpoints" / "teacher" / "checkpoint_best.pt"
    os.utime(teacher, (teacher.stat().st_mtime + 60,) * 2)  # the teacher changed: translate again
    proc = subprocess.run(distill, capture_output=True, text=True, env=environ, timeout=300)
    assert proc.returncode == 1 and "translates the 1500 training sentences" in proc.stdout
    assert "fairseq-generate failed" in proc.stderr
    proc = subprocess.run(distill, capture_output=True, text=True, timeout=60,
                          env=dict(environ, DEST=str(recipe_work / "data-bin")))
    assert proc.returncode == 1 and "DEST must not be" in proc.stderr
    assert (recipe_work / "data-bin" / "dict.de.txt").exists()
    proc = subprocess.run(distill, capture_output=True, text=True, env=dict(environ, MIX="2"), timeout=60)
    assert proc.returncode == 1 and "MIX must be 0 or 1" in proc.stderr


def test_evaluate_sh_translates_the_blind_sets_without_scoring(recipe_work, tmp_path):
    """evaluate.sh ... blind: each blind source (BLIND_DIR/SET.de) translated with the test settings, one line per
    source line, copied to OUTPUTS as RUN.SET.beamB.detok; a missing file is named."""
    blind = tmp_path / "blind"
    blind.mkdir()
    sources = (recipe_work / "raw" / "test2016.de").read_text().splitlines()
    for name, count in ("test2017", 7), ("test2018", 5), ("test2017mscoco", 3):
        (blind / f"{name}.de").write_text("".join(line + "\n" for line in sources[:count]))
    environ = dict(os.environ, WORK=str(recipe_work), BLIND_DIR=str(blind), OUTPUTS=str(tmp_path / "outputs"),
                   PATH=f"{BIN}:{os.environ['PATH']}")
    evaluate = ["bash", os.path.join(RECIPE, "evaluate.sh"), "tutorial", "blind"]
    proc = subprocess.run(evaluate, capture_output=True, text=True, env=dict(environ, RUN_NAME="teacher"),
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "BLEU" not in proc.stdout and "test2017mscoco (blind: not scored here)" in proc.stdout
    test = subprocess.run(["bash", os.path.join(RECIPE, "evaluate.sh"), "tutorial", "test"], capture_output=True,
                          text=True, env=dict(environ, RUN_NAME="teacher"), timeout=300)
    assert test.returncode == 0, test.stdout + test.stderr
    translations = (tmp_path / "outputs" / "teacher.test.beam5.detok").read_text().splitlines()
    for name, count in ("test2017", 7), ("test2018", 5), ("test2017mscoco", 3):
        lines = (tmp_path / "outputs" / f"teacher.{name}.beam5.detok").read_text().splitlines()
        assert lines == translations[:count]  # the same sentences translate as in test2016
    (blind / "test2018.de").unlink()
    os.remove(recipe_work / "data-bin-blind" / "test2.de-en.de.bin")  # binarize again
    proc = subprocess.run(evaluate, capture_output=True, text=True, env=dict(environ, RUN_NAME="teacher"),
                          timeout=300)
    assert proc.returncode == 1 and f"missing {blind}/test2018.de" in proc.stderr


def test_curves_adds_the_sessions_of_a_resumed_run(tmp_path):
    """curves.py reads each validation's minutes from the log's time stamps, the sessions of a resumed run end to
    end (the pause between them not counted), and draws the figure."""
    start = "| INFO | fairseq_cli.train | {'_name': None}\n"
    valid = "| INFO | valid | epoch {:03d} | valid on 'valid' subset | loss {} | nll_loss {} | ppl 9 | num_updates {}\n"
    log = tmp_path / "train.log"
    log.write_text(
        "precision: float32\n"
        "2026-12-04 10:00:00 " + start
        + "2026-12-04 10:06:00 " + valid.format(1, 5.5, 4.5, 100)
        + "2026-12-04 10:12:00 " + valid.format(2, 4.5, 3.5, 200)
        + "2026-12-04 10:12:30 | INFO | fairseq_cli.train | done training in 750.0 seconds\n"
        + "2026-12-04 18:00:00 " + start  # resumed hours later
        + "2026-12-04 18:06:30 " + valid.format(3, 4.0, 3.0, 300))
    pytest.importorskip("matplotlib")
    (tmp_path / "bleu.tsv").write_text("1\t10.5\n3\t20.0\n")
    plain = tmp_path / "plain.log"  # the cross_entropy criterion logs no nll_loss: the loss is the nll
    plain.write_text("2026-12-04 10:00:00 " + start
                     + "2026-12-04 10:06:00 " + valid.format(1, 5.5, 4.5, 100).replace(" | nll_loss 4.5", ""))
    proc = run("python", os.path.join(RECIPE, "curves.py"), str(tmp_path / "c.png"), f"gru={log}",
               f"plain={plain}", "--bleu", f"gru={tmp_path / 'bleu.tsv'}", "--table", str(tmp_path / "t.md"))
    assert (tmp_path / "c.png").stat().st_size > 1000
    # last validation after 12.5 + 6.5 minutes, at epoch 3; the lowest loss at epoch 3; the best BLEU at epoch 3
    assert "| gru | 19 | 3 | 300 | 4.000 / 3.000 | 4.000 (3) | 20.00 (3) |" in proc.stdout
    assert "| plain | 6 | 1 | 100 | 5.500 / 5.500 | 5.500 (1) | - |" in proc.stdout
    assert (tmp_path / "t.md").read_text() == proc.stdout
    from importlib.util import module_from_spec, spec_from_file_location
    spec = spec_from_file_location("curves", os.path.join(RECIPE, "curves.py"))
    curves = module_from_spec(spec)
    spec.loader.exec_module(curves)
    assert [round(p.minutes, 2) for p in curves.read_log(str(log))] == [6.0, 12.0, 19.0]
    (tmp_path / "empty.log").write_text("nothing\n")
    proc = subprocess.run([sys.executable, os.path.join(RECIPE, "curves.py"), str(tmp_path / "d.png"),
                           f"x={tmp_path / 'empty.log'}"], capture_output=True, text=True)
    assert proc.returncode == 1 and "has no 'valid | epoch' lines" in proc.stderr
