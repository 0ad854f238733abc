"""Average the parameters of the last N epoch checkpoints (``checkpointE.pt``) of a fairseq save directory.

    python average_checkpoints.py SAVE_DIR N OUTPUT.pt

(fairseq's own scripts/average_checkpoints.py is not part of its pip package.) The output keeps the newest
checkpoint's configuration and replaces its ``model`` by the element-wise mean; loading uses the package's
allow-list, so torch's ``weights_only`` protection stays on.
"""

import os
import re
import sys

import torch

from fairseq_bahdanau import register

register()  # the allow-list of types fairseq checkpoints hold (compat.py)


def save_whole(state: dict, output: str) -> None:
    """torch.save to OUTPUT by way of a file of this process's own, renamed when whole: a concurrent reader (or a
    second writer) never sees half a checkpoint."""
    partial = f"{output}.{os.getpid()}.partial"
    torch.save(state, partial)
    os.replace(partial, output)


def main() -> None:
    save_dir, count, output = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    epochs = sorted(
        (int(m.group(1)), name)
        for name in os.listdir(save_dir)
        if (m := re.fullmatch(r"checkpoint(\d+)\.pt", name))
    )
    if len(epochs) < count:
        raise SystemExit(f"error: {save_dir} has {len(epochs)} epoch checkpoints, {count} requested")
    chosen = [os.path.join(save_dir, name) for _, name in epochs[-count:]]
    total = None
    for path in chosen:
        model = torch.load(path, map_location="cpu")["model"]
        if total is None:
            total = {k: v.double().clone() for k, v in model.items()}
        else:
            for k, v in model.items():
                total[k] += v.double()
    state = torch.load(chosen[-1], map_location="cpu")
    state["model"] = {k: (v / count).to(state["model"][k].dtype) for k, v in total.items()}
    save_whole(state, output)
    print(f"averaged {', '.join(os.path.basename(p) for p in chosen)} -> {output}")


if __name__ == "__main__":
    main()
