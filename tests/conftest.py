"""Test-wide settings and fixtures.

One intra-op thread: the test models are tiny, and with two threads on a busy 2-core machine small operations can
wait milliseconds for a descheduled OpenMP thread. ``synthetic``: the one trained tiny model that the modules
which need a trained model share (the synthetic reordering corpus, preprocessed, and ``bahdanau_gru_tiny`` trained
on it by ``fairseq-train``), built once per session.
"""

from pathlib import Path
from typing import NamedTuple

import pytest
import torch

from helpers import TRAIN, USER_DIR, corpus, run

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
