"""Test-wide settings and fixtures.

One intra-op thread: the test models are tiny, and with two threads on a busy 2-core machine small operations can
wait milliseconds for a descheduled OpenMP thread. ``synthetic``: the one trained tiny model that the modules
which need a trained model share (the synthetic reordering corpus, preprocessed, and ``bahdanau_gru_tiny`` trained
on it by ``fairseq-train``), built once per session. ``pieces_model``: the same kind of model on sentencepiece
pieces (export and service tests); ``translators``: it and its fixed-context twin exported (service tests).
"""

import os
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

from helpers import TRAIN, USER_DIR, corpus, preprocess, run

torch.set_num_threads(1)

#: epochs of the shared model: enough for BLEU > 80 on the synthetic test split
EPOCHS = 12


class Synthetic(NamedTuple):
    raw: Path  # {train,valid,test}.{src,tgt}: 2,000 / 100 / 100 sentence pairs
    bin: Path  # fairseq-preprocess output
    checkpoints: Path  # checkpoint1.pt .. checkpoint{EPOCHS}.pt, checkpoint_best.pt, checkpoint_last.pt

    @property
    def best(self) -> Path:
        return self.checkpoints / "checkpoint_best.pt"


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory) -> Synthetic:
    """The shared trained tiny model (read it, never write into its directories)."""
    root = corpus(tmp_path_factory.mktemp("synthetic"), train=2000, valid=100, test=100, seed=3)
    run("fairseq-train", str(root / "bin"), "--user-dir", USER_DIR, "--arch", "bahdanau_gru_tiny",
        "--max-epoch", str(EPOCHS), "--save-dir", str(root / "tiny"), *TRAIN)
    return Synthetic(root / "raw", root / "bin", root / "tiny")


@pytest.fixture(scope="session")
def pieces_model(tmp_path_factory):
    """The synthetic corpus segmented by a small sentencepiece model, and the tiny model trained on it for a few
    epochs: (spm model, data-bin, checkpoint directory, raw directory). Shared by the export and service tests."""
    import sentencepiece

    from fairseq_bahdanau.analysis.synthetic import write_corpus

    root = tmp_path_factory.mktemp("pieces")
    raw, seg = root / "raw", root / "seg"
    write_corpus(str(raw), train=1500, valid=50, test=50, seed=5)
    sentencepiece.SentencePieceTrainer.train(
        input=f"{raw}/train.src,{raw}/train.tgt", model_prefix=str(root / "spm"), vocab_size=120,
        model_type="unigram", character_coverage=1.0, bos_id=-1, eos_id=-1, pad_id=-1, unk_id=0, minloglevel=2)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(root / "spm.model"))
    seg.mkdir()
    for name in os.listdir(raw):
        lines = (raw / name).read_text().splitlines()
        (seg / name).write_text("".join(" ".join(sp.encode(line, out_type=str)) + "\n" for line in lines))
    preprocess(seg, root / "bin")
    run("fairseq-train", str(root / "bin"), "--user-dir", USER_DIR, "--arch", "bahdanau_gru_tiny",
        "--max-epoch", "4", "--save-dir", str(root / "ckpt"), *TRAIN)
    return root / "spm.model", root / "bin", root / "ckpt", raw


class Translators(NamedTuple):
    attention: Path  # the pieces model, exported (beam 5)
    encdec: Path  # the same data and training with --attention-type none, exported
    raw: Path  # the raw corpus (test.src: sentences to translate)


@pytest.fixture(scope="session")
def translators(pieces_model, tmp_path_factory) -> Translators:
    import sys

    spm, data, ckpt, raw = pieces_model
    root = tmp_path_factory.mktemp("translators")
    run("fairseq-train", str(data), "--user-dir", USER_DIR, "--arch", "bahdanau_gru_tiny", "--attention-type",
        "none", "--max-epoch", "4", "--save-dir", str(root / "encdec-ckpt"), *TRAIN)
    for name, checkpoint in (("attention", ckpt / "checkpoint_best.pt"),
                             ("encdec", root / "encdec-ckpt" / "checkpoint_best.pt")):
        run(sys.executable, "-m", "fairseq_bahdanau.model.export", "--path", str(checkpoint), "--data", str(data),
            "--spm", str(spm), "--output", str(root / f"{name}.onnx"))
    return Translators(root / "attention.onnx", root / "encdec.onnx", raw)
