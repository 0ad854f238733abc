"""Validation loss (and, where given, valid BLEU per epoch) against training minutes, read from train.sh's logs.

    python curves.py OUTPUT.png NAME=SAVE_DIR/train.log [NAME=...] [--bleu NAME=BLEU.tsv ...] [--table OUT.md]

Minutes come from the time stamps of fairseq's log lines: from the first line of each training session to each
``valid | epoch`` line, with the sessions of a resumed run (each starts with fairseq's configuration line) added
end to end. That counts everything fairseq-train spends, validation and checkpoint saving included, as its
``--stop-time-hours`` does. A BLEU file holds ``epoch<TAB>BLEU`` lines (e.g. valid BLEU of each epoch checkpoint).
"""

import argparse
import datetime
import re
from typing import Dict, List, NamedTuple

STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) \| ")
VALID = re.compile(r"\| valid \| epoch (\d+) \| valid on 'valid' subset \| loss ([\d.]+)(?: \| nll_loss ([\d.]+))?"
                   r".*\| num_updates (\d+)")  # (cross_entropy logs no nll_loss: there it is the loss)
SESSION_START = "| fairseq_cli.train | {"  # fairseq's configuration dump: the first line of a training session


class Point(NamedTuple):
    """One validation of a run: after ``minutes`` of training (``updates`` updates, epoch ``epoch``)."""
    epoch: int
    minutes: float
    updates: int
    loss: float
    nll: float


def read_log(path: str) -> List[Point]:
    """The validations of one train.log, with cumulative training minutes over its sessions."""
    points: List[Point] = []
    done = 0.0  # seconds of the sessions before the current one
    start = last = None
    with open(path, encoding="utf-8") as log:
        for line in log:
            stamp = STAMP.match(line)
            if not stamp:
                continue
            now = datetime.datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S").timestamp()
            if start is None or SESSION_START in line:
                if start is not None:
                    done += last - start
                start = now
            last = now
            valid = VALID.search(line)
            if valid:
                epoch, loss, nll, updates = valid.groups()
                points.append(Point(int(epoch), (done + now - start) / 60, int(updates), float(loss),
                                    float(nll or loss)))
    if not points:
        raise SystemExit(f"error: {path} has no 'valid | epoch' lines: is it a fairseq-train log?")
    return points


def read_bleu(path: str) -> Dict[int, float]:
    """epoch -> BLEU from ``epoch<TAB>BLEU`` lines."""
    scores = {}
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            fields = line.split()
            if not fields:
                continue
            try:
                epoch, bleu = fields
                scores[int(epoch)] = float(bleu)
            except ValueError:
                raise SystemExit(f"error: {path}:{number}: expected 'epoch<TAB>BLEU', got {line.strip()!r}")
    return scores


def named(pairs: List[str]) -> Dict[str, str]:
    """``NAME=PATH`` arguments as a dict, in order."""
    result = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"error: expected NAME=PATH, got {pair!r}")
        result[name] = path
    return result


def table(runs: Dict[str, List[Point]], bleu: Dict[str, Dict[int, float]]) -> str:
    """A markdown table: each run's last validation and its lowest validation loss."""
    rows = ["| run | minutes | epochs | updates | last valid loss / nll | lowest valid loss (epoch) "
            "| best valid BLEU (epoch) |",
            "|---|---|---|---|---|---|---|"]
    for name, points in runs.items():
        last, lowest = points[-1], min(points, key=lambda p: p.loss)
        scores = bleu.get(name, {})
        top = max(scores, key=scores.get) if scores else None
        rows.append(f"| {name} | {last.minutes:.0f} | {last.epoch} | {last.updates} | {last.loss:.3f} / {last.nll:.3f} "
                    f"| {lowest.loss:.3f} ({lowest.epoch}) | "
                    + (f"{scores[top]:.2f} ({top}) |" if top is not None else "- |"))
    return "\n".join(rows) + "\n"


def plot(output: str, runs: Dict[str, List[Point]], bleu: Dict[str, Dict[int, float]],
         bleu_label: str = "valid BLEU (cased sacreBLEU)") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if bleu else 1
    figure, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.2), squeeze=False)
    for name, points in runs.items():
        line, = axes[0][0].plot([p.minutes for p in points], [p.nll for p in points], marker=".", label=name)
        if name in bleu:
            minutes = {p.epoch: p.minutes for p in points}
            epochs = sorted(e for e in bleu[name] if e in minutes)
            axes[0][1].plot([minutes[e] for e in epochs], [bleu[name][e] for e in epochs], marker=".",
                            color=line.get_color(), label=name)
    axes[0][0].set_ylabel("valid nll (bits per target piece)")
    axes[0][0].set_ylim(top=min(8.0, axes[0][0].get_ylim()[1]))
    if bleu:
        axes[0][1].set_ylabel(bleu_label)
    for axis in axes[0]:
        axis.set_xlabel("training minutes")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(output, dpi=110)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", help="the figure (.png)")
    parser.add_argument("runs", nargs="+", help="NAME=path/to/train.log")
    parser.add_argument("--bleu", action="append", default=[], help="NAME=path/to/epoch-bleu.tsv")
    parser.add_argument("--bleu-label", default="valid BLEU (cased sacreBLEU)", help="the BLEU panel's axis label")
    parser.add_argument("--table", help="also write a markdown summary here")
    args = parser.parse_args(argv)
    runs = {name: read_log(path) for name, path in named(args.runs).items()}
    bleu = {name: read_bleu(path) for name, path in named(args.bleu).items()}
    unknown = set(bleu) - set(runs)
    if unknown:
        raise SystemExit(f"error: --bleu for runs not given: {', '.join(sorted(unknown))}")
    summary = table(runs, bleu)
    print(summary, end="")
    if args.table:
        with open(args.table, "w", encoding="utf-8") as out:
            out.write(summary)
    plot(args.output, runs, bleu, args.bleu_label)


if __name__ == "__main__":
    main()
