"""``fairseq-train`` (fairseq's own ``cli_main``) that also writes every rank's validation losses.

fairseq logs only rank 0 (the other ranks log warnings only), so a test that wants to see that every rank
computed the same validation loss starts this script in place of the ``fairseq-train`` console script, e.g.
``torchrun ... tests/fairseq_train_every_rank.py DATA ...``. Each validation appends a line of ``repr(loss)``
values to ``$VALID_LOSS_DIR/rank{R}.txt``; nothing else differs from ``fairseq-train``.
"""

import os
import sys

from fairseq.distributed import utils as distributed_utils
from fairseq_cli import train

_validate = train.validate


def validate(cfg, trainer, task, epoch_itr, subsets):
    losses = _validate(cfg, trainer, task, epoch_itr, subsets)
    rank = distributed_utils.get_rank(distributed_utils.get_global_group())
    with open(os.path.join(os.environ["VALID_LOSS_DIR"], f"rank{rank}.txt"), "a") as f:
        f.write(" ".join(repr(float(loss)) for loss in losses) + "\n")
    return losses


train.validate = validate  # validate_and_save looks it up in the module at every call

if __name__ == "__main__":
    sys.exit(train.cli_main())
