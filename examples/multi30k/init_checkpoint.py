"""Write a checkpoint's weights as the starting point of a new run (train.sh's ``INIT``).

    python init_checkpoint.py CHECKPOINT.pt OUTPUT.pt

fairseq-train's ``--finetune-from-model`` starts a run from a checkpoint's weights with a fresh optimizer, schedule,
meters and data iterator, but it keeps the checkpoint's training clock (``extra_state["previous_training_time"]``,
fairseq 0.12: ``Trainer.load_checkpoint`` reads it whatever is reset), so ``--stop-time-hours`` counts the earlier
run's hours too and a run started from an 87-minute checkpoint with the same budget stops after its first update.
The output is the checkpoint with its clock at zero, at epoch 1, and without its optimizer state (which the new run
does not
load). Loading uses the package's allow-list, so torch's ``weights_only`` protection stays on.
"""

import os
import sys

import torch

from average_checkpoints import save_whole  # this folder's (a script's folder comes first on sys.path)
from fairseq_bahdanau import register

register()  # the allow-list of types fairseq checkpoints hold (compat.py)


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit("usage: init_checkpoint.py CHECKPOINT.pt OUTPUT.pt")
    source, output = sys.argv[1], sys.argv[2]
    if not os.path.isfile(source):
        raise SystemExit(f"error: {source} is missing")
    state = torch.load(source, map_location="cpu")
    if not isinstance(state, dict) or "model" not in state:
        raise SystemExit(f"error: {source} is not a fairseq checkpoint (no model weights in it)")
    # a fresh clock and epoch 1 (fairseq needs a train_iterator entry even where the data iterator is reset)
    state["extra_state"] = {"previous_training_time": 0.0,
                            "train_iterator": {"version": 2, "epoch": 1, "iterations_in_epoch": 0, "shuffle": True}}
    state["last_optimizer_state"] = None
    save_whole(state, output)
    print(f"{source}'s weights -> {output} (a new run's start: training clock 0, no optimizer state)")


if __name__ == "__main__":
    main()
