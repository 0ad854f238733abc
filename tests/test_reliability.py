"""Bad input, bad flags, bad checkpoints and interrupted training: each fails clearly or recovers, losing nothing."""

import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from fairseq_bahdanau.model.compat import CheckpointError
from fairseq_bahdanau.analysis.synthetic import Lexicon, write_corpus
from helpers import TRAIN, USER_DIR, preprocess, run, tool_env, tool_path


@pytest.fixture(scope="module")
def model(synthetic):
    """The shared trained tiny model: (data dir, checkpoint path, raw dir)."""
    return synthetic.bin, synthetic.best, synthetic.raw


def interactive(data, checkpoint, lines, *extra, check=True):
    return run("fairseq-interactive", str(data), "--user-dir", USER_DIR, "--path", str(checkpoint), "--cpu",
               "--source-lang", "src", "--target-lang", "tgt", "--beam", "5", *extra,
               stdin="".join(line + "\n" for line in lines), check=check)


def hypothesis_ids(output):
    return [int(line.split("\t")[0][2:]) for line in output.splitlines() if line.startswith("H-")]


# ---------------------------------------------------------------- input


def test_interactive_answers_empty_and_unknown_lines(model):
    data, checkpoint, raw = model
    good = (raw / "test.src").read_text().splitlines()[0]
    out = interactive(data, checkpoint, [good, "", "QQQ XXX ZZZ", good]).stdout
    assert hypothesis_ids(out) == [0, 1, 2, 3]
    assert "S-2\t<unk> <unk> <unk>" in out


def test_generate_answers_empty_and_unknown_lines(model, tmp_path):
    data, checkpoint, raw = model
    good = (raw / "test.src").read_text().splitlines()[:2]
    good_tgt = (raw / "test.tgt").read_text().splitlines()[:2]
    for side, lines in (("src", [good[0], "", "QQQ XXX", good[1]]), ("tgt", [good_tgt[0], "X", "Y", good_tgt[1]])):
        (tmp_path / f"odd.{side}").write_text("\n".join(lines) + "\n")
    run("fairseq-preprocess", "--source-lang", "src", "--target-lang", "tgt", "--testpref", str(tmp_path / "odd"),
        "--srcdict", str(data / "dict.src.txt"), "--tgtdict", str(data / "dict.tgt.txt"), "--destdir",
        str(tmp_path / "bin"), "--workers", "1")
    out = run("fairseq-generate", str(tmp_path / "bin"), "--user-dir", USER_DIR, "--path", str(checkpoint),
              "--beam", "5", "--cpu", "--batch-size", "8").stdout
    assert sorted(hypothesis_ids(out)) == [0, 1, 2, 3]


def test_over_long_sentence_fails_clearly_or_is_skipped_with_a_warning(model):
    data, checkpoint, raw = model
    good = (raw / "test.src").read_text().splitlines()[:2]
    long_line = " ".join([good[0].split()[0]] * 60)
    lines = [good[0], long_line, good[1]]
    refused = interactive(data, checkpoint, lines, "--max-source-positions", "50", check=False)
    assert refused.returncode != 0
    assert "invalid" in refused.stderr and "--skip-invalid-size-inputs-valid-test" in refused.stderr
    assert hypothesis_ids(refused.stdout) == [0]  # what came before is already written
    skipped = interactive(data, checkpoint, lines, "--max-source-positions", "50",
                          "--skip-invalid-size-inputs-valid-test")
    assert hypothesis_ids(skipped.stdout) == [0, 2]
    assert "invalid sizes and will be skipped" in skipped.stderr


def test_500_token_source_translates_within_bounded_memory(model):
    data, checkpoint, raw = model
    words = Lexicon(5).source["noun"]
    sentence = " ".join(words[i % len(words)] for i in range(500))
    probe = (
        "import resource, subprocess, sys\n"
        "p = subprocess.run(sys.argv[1:], input=sys.stdin.read(), capture_output=True, text=True)\n"
        "sys.stdout.write(p.stdout)\n"
        "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        "sys.exit(p.returncode)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe, tool_path("fairseq-interactive"), str(data), "--user-dir", USER_DIR,
         "--path", str(checkpoint), "--cpu", "--source-lang", "src", "--target-lang", "tgt", "--beam", "5",
         "--min-len", "100"],  # a long decode over the 500 positions, whatever the model would stop at
        input=sentence + "\n", capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert hypothesis_ids(proc.stdout) == [0]
    hypothesis = next(line for line in proc.stdout.splitlines() if line.startswith("H-0")).split("\t")[2].split()
    assert len(hypothesis) >= 100
    peak_mb = int(proc.stdout.split("MAXRSS_KB")[1].split()[0]) / 1024
    assert peak_mb < 2000, f"peak memory {peak_mb:.0f} MB"


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--attention-type", "cosine"], "--attention-type"),
        (["--encoder-hidden-size", "0"], "--encoder-hidden-size"),
        (["--decoder-embed-dim", "-8"], "--decoder-embed-dim"),
        (["--teacher-forcing-ratio", "1.5"], "--teacher-forcing-ratio"),
        (["--share-decoder-input-output-embed"], "--share-decoder-input-output-embed"),
    ],
)
def test_bad_flags_are_refused_at_start_up_and_existing_checkpoints_survive(model, tmp_path, flags, named):
    data, checkpoint, _ = model
    (tmp_path / "checkpoint_last.pt").write_bytes(checkpoint.read_bytes())
    before = (tmp_path / "checkpoint_last.pt").read_bytes()
    proc = run("fairseq-train", str(data), "--user-dir", USER_DIR, "--arch", "bahdanau_gru_tiny", "--max-epoch", "1",
               "--save-dir", str(tmp_path), *TRAIN, *flags, check=False)
    assert proc.returncode != 0
    last_line = proc.stderr.strip().splitlines()[-1]
    assert named in last_line, last_line
    assert "begin training" not in proc.stderr + proc.stdout
    assert (tmp_path / "checkpoint_last.pt").read_bytes() == before


# ---------------------------------------------------------------- checkpoints


def generate(data, checkpoint, check=False):
    return run("fairseq-generate", str(data), "--user-dir", USER_DIR, "--path", str(checkpoint), "--cpu",
               "--batch-size", "50", check=check)


def test_any_random_bytes_are_a_checkpoint_error(tmp_path):
    """Whatever torch.load's unpickler raises on damaged bytes (UnicodeDecodeError, IndexError, KeyError,
    struct.error, ... depending on the bytes) reaches the user as one CheckpointError naming the file."""
    from fairseq import checkpoint_utils

    bad = tmp_path / "bad.pt"
    for seed in range(300):
        rng = random.Random(seed)
        bad.write_bytes(rng.randbytes(rng.choice([1, 2, 8, 100, 5000])))
        with pytest.raises(CheckpointError, match=f"checkpoint {bad} is truncated or corrupt"):
            checkpoint_utils.load_checkpoint_to_cpu(str(bad))


@pytest.mark.parametrize("damage", ["empty", "truncated", "random bytes"])
def test_corrupt_checkpoint_is_named(model, tmp_path, damage):
    data, checkpoint, _ = model
    bad = tmp_path / "bad.pt"
    content = checkpoint.read_bytes()
    damaged = {"empty": b"", "truncated": content[: len(content) // 2],
               "random bytes": random.Random(0).randbytes(len(content))}
    bad.write_bytes(damaged[damage])
    proc = generate(data, bad)
    assert proc.returncode != 0
    assert f"CheckpointError: checkpoint {bad} is truncated or corrupt" in proc.stderr


def test_checkpoint_that_would_run_code_is_refused_and_the_code_does_not_run(model, tmp_path):
    data, _, _ = model
    marker = tmp_path / "the_payload_ran"
    evil = tmp_path / "evil.pt"
    writer = (
        "import os, sys, torch\n"
        "class Payload:\n"
        "    def __reduce__(self):\n"
        f"        return (os.system, ('touch {marker}',))\n"
        f"torch.save({{'model': {{}}, 'cfg': None, 'args': Payload()}}, '{evil}')\n"
    )
    subprocess.run([sys.executable, "-c", writer], check=True)
    assert evil.exists() and not marker.exists()
    proc = generate(data, evil)
    assert proc.returncode != 0
    assert f"CheckpointError: refused to load checkpoint {evil}" in proc.stderr
    assert "system" in proc.stderr
    assert not marker.exists()
    # and in-process, through fairseq's loader
    from fairseq import checkpoint_utils

    with pytest.raises(CheckpointError, match="not allow-listed"):
        checkpoint_utils.load_checkpoint_to_cpu(str(evil))
    assert not marker.exists()


def test_dictionary_that_does_not_match_the_checkpoint_is_named(model, tmp_path):
    data, checkpoint, _ = model
    write_corpus(str(tmp_path / "raw"), train=50, valid=5, test=5, seed=5)
    preprocess(tmp_path / "raw", tmp_path / "bin", "--nwordssrc", "10", "--nwordstgt", "10")  # smaller dictionaries
    proc = generate(tmp_path / "bin", checkpoint)
    assert proc.returncode != 0
    assert re.search(r"the checkpoint's source vocabulary has \d+ entries but the source dictionary given here "
                     r"has \d+", proc.stderr), proc.stderr[-1500:]


def test_checkpoint_of_another_architecture_is_named(model, tmp_path):
    data, _, _ = model
    run("fairseq-train", str(data), "--arch", "lstm", "--encoder-embed-dim", "16", "--encoder-hidden-size", "16",
        "--decoder-embed-dim", "16", "--decoder-hidden-size", "16", "--decoder-out-embed-dim", "16",
        "--max-epoch", "1", "--save-dir", str(tmp_path / "lstm"), *TRAIN)
    proc = run("fairseq-train", str(data), "--user-dir", USER_DIR, "--arch", "bahdanau_gru_tiny", "--max-epoch", "1",
               "--save-dir", str(tmp_path / "gru"), "--restore-file", str(tmp_path / "lstm" / "checkpoint_last.pt"),
               "--reset-optimizer", *TRAIN, check=False)
    assert proc.returncode != 0
    assert "do not belong to this bahdanau_gru model" in proc.stderr


# ---------------------------------------------------------------- interrupted training


def final_valid_loss(save_dir):
    state = torch.load(save_dir / "checkpoint_last.pt", map_location="cpu")
    return float(state["extra_state"]["val_loss"])


def loadable(path):
    try:
        torch.load(path, map_location="cpu")
        return True
    except Exception:
        return False


def test_training_killed_mid_epoch_resumes_and_loses_nothing(model, tmp_path):
    data, _, _ = model
    command = [tool_path("fairseq-train"), str(data), "--user-dir", USER_DIR, "--arch", "bahdanau_gru_tiny",
               "--max-epoch", "3", "--save-interval-updates", "8", "--keep-interval-updates", "2", *TRAIN]
    env = tool_env()
    clean = subprocess.run(command + ["--save-dir", str(tmp_path / "clean")], capture_output=True, text=True, env=env)
    assert clean.returncode == 0, clean.stderr[-2000:]

    save = tmp_path / "killed"
    kills = 0
    for delay in (0.5, 0.9, 1.3):  # after the checkpoint appears: kill while training (or saving)
        proc = subprocess.Popen(command + ["--save-dir", str(save)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=env)
        last = save / "checkpoint_last.pt"
        seen = last.stat().st_mtime if last.exists() else 0
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            if last.exists() and last.stat().st_mtime != seen:
                time.sleep(delay)
                break
            time.sleep(0.02)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        for checkpoint in save.glob("checkpoint*.pt"):
            assert loadable(checkpoint), f"{checkpoint.name} is half-written after SIGKILL"
    assert kills >= 2

    resumed = subprocess.run(command + ["--save-dir", str(save)], capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    log = resumed.stdout + resumed.stderr
    assert re.search(r"Loaded checkpoint .*checkpoint_last\.pt \(epoch \d+ @ [1-9]\d* updates\)", log)
    a, b = final_valid_loss(tmp_path / "clean"), final_valid_loss(save)
    assert abs(a - b) <= 0.25 * max(a, b) + 0.05, (a, b)
