"""Translate with an exported translator (``fairseq_bahdanau.export``): torch and sentencepiece, no fairseq.

    python -m fairseq_bahdanau.serve translator.pt < input.de > output.en

One line in, one line out, in order; the output is what ``fairseq-interactive`` prints on its ``D-`` lines for the
same checkpoint. In Python:

    from fairseq_bahdanau.serve import load
    translate = load("translator.pt")
    translate(["Ein Mann fährt Fahrrad."])  # -> ["A man is riding a bike."]

This module imports nothing of fairseq (nor does the package or ``export`` at import), so it and the
translator file are all a deployment needs besides torch and sentencepiece.
"""

import argparse
import json
import sys
from typing import Callable, Dict, Iterable, Iterator, List, Optional

import torch

from .export import META_FILE, SPM_FILE


class LoadedTranslator:
    """Text in, text out: sentencepiece encoding, the scripted translator, and fairseq's decoding of pieces."""

    def __init__(self, path: str, threads: Optional[int] = None) -> None:
        extra: Dict[str, bytes] = {META_FILE: b"", SPM_FILE: b""}
        try:
            self.module = torch.jit.load(path, map_location="cpu", _extra_files=extra)
        except RuntimeError as error:
            raise ValueError(f"{path} is not a translator written by fairseq_bahdanau.export ({error})") from None
        if not extra[META_FILE]:
            raise ValueError(f"{path} is a TorchScript file but not a translator written by fairseq_bahdanau.export")
        self.meta = json.loads(extra[META_FILE])
        self.module.eval()
        self.sp = None
        if self.meta["sentencepiece"]:
            import sentencepiece

            self.sp = sentencepiece.SentencePieceProcessor(model_proto=extra[SPM_FILE])
        if threads:
            torch.set_num_threads(threads)

    def pieces(self, line: str) -> List[str]:
        """fairseq-interactive's reading of a line: stripped, sentencepiece pieces (or whitespace tokens)."""
        line = line.strip()
        if self.sp is None:
            return line.split()
        return " ".join(self.sp.encode(line, out_type=str)).split()

    def text(self, pieces: List[str]) -> str:
        """fairseq's decoding of pieces (``SentencepieceBPE.decode``): joined, word boundaries to spaces."""
        if self.sp is None:
            return " ".join(pieces)
        return "".join(pieces).replace("\u2581", " ").strip()

    def __call__(self, lines: List[str]) -> List[str]:
        """Translate a batch of lines (one padded batch; see ``serve`` for one line at a time). An empty or
        all-blank line translates to an empty string (fairseq-interactive would invent a sentence for it)."""
        pieces = [self.pieces(line) for line in lines]
        todo = [i for i, p in enumerate(pieces) if p]
        out = [""] * len(lines)
        if todo:
            with torch.no_grad():
                for i, hypothesis in zip(todo, self.module([pieces[i] for i in todo])):
                    out[i] = self.text(hypothesis)
        return out


def load(path: str, threads: Optional[int] = None) -> Callable[[List[str]], List[str]]:
    """The translator in ``path``: a function from a list of lines to their translations."""
    return LoadedTranslator(path, threads)


def batches(lines: Iterable[str], size: int) -> Iterator[List[str]]:
    batch: List[str] = []
    for line in lines:
        batch.append(line)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("translator", help="the file fairseq_bahdanau.export wrote")
    parser.add_argument("--batch-size", type=int, default=1,
                        help="lines translated together (default 1, as fairseq-interactive)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    try:
        translate = load(args.translator, args.threads)
    except (OSError, ValueError) as error:
        parser.exit(1, f"error: {error}\n")
    for batch in batches(sys.stdin, args.batch_size):
        for line in translate(batch):
            print(line, flush=True)


if __name__ == "__main__":
    main()
