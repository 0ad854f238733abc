"""End to end through fairseq's own tools: preprocess, train (and resume), generate, interactive, hub."""

import re

import pytest
import sacrebleu

from conftest import EPOCHS
from helpers import TRAIN, USER_DIR, run


@pytest.fixture(scope="module")
def data(synthetic):
    """The shared corpus's directory: ``raw/`` and ``bin/``."""
    return synthetic.raw.parent


@pytest.fixture(scope="module")
def trained(synthetic):
    """The shared model's checkpoint directory."""
    return synthetic.checkpoints


def hypotheses(output: str, prefix: str = "H"):
    """{sentence id: [hypothesis strings]} from fairseq-generate / interactive output."""
    found = {}
    for line in output.splitlines():
        if line.startswith(prefix + "-"):
            head, _score, text = line.split("\t")
            found.setdefault(int(head[len(prefix) + 1 :]), []).append(text)
    return found


def bleu_on_test_split(data, checkpoint) -> float:
    """sacreBLEU of ``checkpoint``'s beam-5 translations of the synthetic test split."""
    out = run("fairseq-generate", str(data / "bin"), "--user-dir", USER_DIR, "--path", str(checkpoint),
              "--beam", "5", "--batch-size", "50", "--cpu").stdout
    hyps = hypotheses(out)
    refs = (data / "raw/test.tgt").read_text().splitlines()
    return sacrebleu.corpus_bleu([hyps[i][0] for i in range(len(refs))], [refs]).score


def test_training_learns_the_reordering_task(data, trained):
    bleu = bleu_on_test_split(data, trained / "checkpoint_best.pt")
    assert bleu > 80, f"trained tiny model only reaches BLEU {bleu:.1f}"


def test_an_untrained_model_cannot_do_it(data, tmp_path):
    # one epoch at a negligible learning rate: the weights stay as initialised
    run("fairseq-train", str(data / "bin"), "--user-dir", USER_DIR, "--arch", "bahdanau_gru_tiny",
        "--max-epoch", "1", "--save-dir", str(tmp_path), *TRAIN, "--lr", "1e-9")
    out = run("fairseq-generate", str(data / "bin"), "--user-dir", USER_DIR, "--path",
              str(tmp_path / "checkpoint_last.pt"), "--beam", "5", "--batch-size", "50", "--cpu").stdout
    hyps = hypotheses(out)
    refs = (data / "raw/test.tgt").read_text().splitlines()
    assert sacrebleu.corpus_bleu([hyps[i][0] for i in range(len(refs))], [refs]).score < 10


def test_generate_prints_alignments_that_find_the_moved_verb(data, trained):
    out = run("fairseq-generate", str(data / "bin"), "--user-dir", USER_DIR, "--path",
              str(trained / "checkpoint_best.pt"), "--beam", "5", "--batch-size", "50", "--cpu",
              "--print-alignment").stdout
    rows = [line.split("\t") for line in out.splitlines()]
    sources = {int(row[0][2:]): row[1].split() for row in rows if row[0].startswith("S-")}
    alignments = {int(row[0][2:]): row[1].split() for row in rows if row[0].startswith("A-")}
    assert len(alignments) == len(sources) == 100
    verb_found = 0
    for i, pairs in alignments.items():
        pairs = [tuple(map(int, p.split("-"))) for p in pairs]
        assert all(0 <= s < len(sources[i]) for s, _ in pairs)
        # the first target word translates the verb, which is the last source word
        verb_found += (len(sources[i]) - 1, 0) in pairs
    assert verb_found >= 90


def test_nbest_and_ensemble(data, trained):
    out = run("fairseq-generate", str(data / "bin"), "--user-dir", USER_DIR, "--path",
              f"{trained / 'checkpoint_best.pt'}:{trained / f'checkpoint{EPOCHS - 1}.pt'}", "--beam", "4",
              "--nbest", "3", "--batch-size", "50", "--cpu").stdout
    hyps = hypotheses(out)
    assert len(hyps) == 100 and all(len(h) == 3 for h in hyps.values())
    assert "BLEU4" in out


@pytest.mark.parametrize("attention_type", ["dot", "general"])
def test_luong_attention_trains_and_generates(data, tmp_path, attention_type):
    run("fairseq-train", str(data / "bin"), "--user-dir", USER_DIR, "--arch", "bahdanau_gru_tiny",
        "--attention-type", attention_type, "--max-epoch", "1", "--save-dir", str(tmp_path), *TRAIN)
    out = run("fairseq-generate", str(data / "bin"), "--user-dir", USER_DIR, "--path",
              str(tmp_path / "checkpoint_last.pt"), "--beam", "3", "--batch-size", "50", "--cpu",
              "--print-alignment").stdout
    assert len(hypotheses(out)) == 100
    assert sum(line.startswith("A-") for line in out.splitlines()) == 100


def test_without_attention_trains_and_generates_and_refuses_alignments(data, tmp_path):
    """--arch bahdanau_gru_tiny --attention-type none (the RNNencdec baseline) through fairseq's tools."""
    run("fairseq-train", str(data / "bin"), "--user-dir", USER_DIR, "--arch", "bahdanau_gru_tiny",
        "--attention-type", "none", "--max-epoch", "1", "--save-dir", str(tmp_path), *TRAIN)
    generate = ["fairseq-generate", str(data / "bin"), "--user-dir", USER_DIR, "--path",
                str(tmp_path / "checkpoint_last.pt"), "--beam", "3", "--batch-size", "50", "--cpu"]
    assert len(hypotheses(run(*generate).stdout)) == 100
    refused = run(*generate, "--print-alignment", check=False)
    assert refused.returncode != 0 and "--print-alignment needs attention weights" in refused.stderr


@pytest.mark.parametrize("options", [
    ["--beam", "6", "--diverse-beam-groups", "2", "--nbest", "6"],  # compat.py: diverse_beam_batch_positions
    ["--beam", "4", "--diversity-rate", "0.5"],
    ["--sampling", "--sampling-topk", "5", "--beam", "2", "--nbest", "2", "--seed", "3"],
    ["--sampling", "--sampling-topp", "0.9", "--beam", "2", "--nbest", "2", "--seed", "3"],
    ["--beam", "4", "--no-repeat-ngram-size", "2", "--match-source-len", "--prefix-size", "1"],
], ids=["diverse-beam-groups", "diversity-rate", "sampling-topk", "sampling-topp", "constrained-length"])
def test_every_search_strategy_generates(data, trained, options):
    """Batches of 16 (the diverse beam search bug needs a batch other than the first)."""
    out = run("fairseq-generate", str(data / "bin"), "--user-dir", USER_DIR, "--path",
              str(trained / "checkpoint_best.pt"), "--batch-size", "16", "--cpu", *options).stdout
    found = hypotheses(out)
    nbest = int(options[options.index("--nbest") + 1]) if "--nbest" in options else 1
    assert sorted(found) == list(range(100)) and all(len(h) == nbest for h in found.values())


def test_interactive_translates_stdin(data, trained, tmp_path):
    raw = (data / "raw/test.src").read_text().splitlines()[:5]
    refs = (data / "raw/test.tgt").read_text().splitlines()[:5]
    # run from another directory, with --user-dir pointing at the package directory
    out = run("fairseq-interactive", str(data / "bin"), "--user-dir", USER_DIR, "--path",
              str(trained / "checkpoint_best.pt"), "--beam", "5", "--source-lang", "src", "--target-lang", "tgt",
              "--cpu", stdin="\n".join(raw) + "\n", cwd=str(tmp_path)).stdout
    hyps = hypotheses(out)
    assert [hyps[i][0] for i in range(5)] == refs


def test_training_resumes_from_checkpoint_last(data, trained, tmp_path):
    save = tmp_path / "resume"
    save.mkdir()
    for name in ("checkpoint_last.pt", "checkpoint_best.pt"):
        (save / name).write_bytes((trained / name).read_bytes())
    out = run("fairseq-train", str(data / "bin"), "--user-dir", USER_DIR, "--arch", "bahdanau_gru_tiny",
              "--max-epoch", str(EPOCHS + 1), "--save-dir", str(save), *TRAIN)
    log = out.stdout + out.stderr
    assert re.search(rf"Loaded checkpoint .*checkpoint_last\.pt \(epoch {EPOCHS + 1} @", log), log[-3000:]
    assert f"epoch {EPOCHS + 1:03d} | valid on 'valid' subset" in log
    assert f"epoch {EPOCHS:03d} | valid" not in log


def test_hub_interface_translates(data, trained):
    from fairseq_bahdanau import BahdanauGRUModel

    hub = BahdanauGRUModel.from_pretrained(str(trained), checkpoint_file="checkpoint_best.pt",
                                           data_name_or_path=str(data / "bin"))
    src = (data / "raw/test.src").read_text().splitlines()[0]
    ref = (data / "raw/test.tgt").read_text().splitlines()[0]
    assert hub.translate(src, beam=5) == ref


def test_bfloat16_autocast_training_learns_and_saves_float32(data, tmp_path):
    """--autocast-bf16 trains the tiny model to the same standard through fairseq-train, and its checkpoint holds
    float32 parameters (evaluation in float32: test_autocast.py::test_mixed_precision_training_step)."""
    run("fairseq-train", str(data / "bin"), "--user-dir", USER_DIR, "--arch", "bahdanau_gru_tiny", "--autocast-bf16",
        "--max-epoch", str(EPOCHS), "--save-dir", str(tmp_path), *TRAIN)
    import torch
    from fairseq import checkpoint_utils

    state = checkpoint_utils.load_checkpoint_to_cpu(str(tmp_path / "checkpoint_best.pt"))
    assert state["cfg"]["model"].autocast_bf16
    assert {v.dtype for v in state["model"].values() if v.is_floating_point()} == {torch.float32}
    bleu = bleu_on_test_split(data, tmp_path / "checkpoint_best.pt")
    assert bleu > 80, f"tiny model trained under bfloat16 autocast only reaches BLEU {bleu:.1f}"


def test_checkpoint_from_before_the_newer_flags_loads(data, trained, tmp_path):
    """A checkpoint whose model configuration predates --word-dropout and --autocast-bf16 loads with both off."""
    import torch

    state = torch.load(trained / "checkpoint_best.pt", weights_only=True)  # cfg is saved as plain containers
    del state["cfg"]["model"]["autocast_bf16"], state["cfg"]["model"]["word_dropout"]
    torch.save(state, tmp_path / "old.pt")
    out = run("fairseq-generate", str(data / "bin"), "--user-dir", USER_DIR, "--path", str(tmp_path / "old.pt"),
              "--beam", "5", "--batch-size", "50", "--cpu").stdout
    assert len(hypotheses(out)) == 100
