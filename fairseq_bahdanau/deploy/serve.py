"""Translate with an exported translator (``fairseq_bahdanau.model.export``): ONNX Runtime, numpy and sentencepiece.

    python -m fairseq_bahdanau.deploy.serve translator.onnx < input.de > output.en          # the line filter
    python -m fairseq_bahdanau.deploy.serve --port 8000 attention.onnx [encdec.onnx ...]    # the HTTP service and page

The filter: one line in, one line out, in order; the output is what ``fairseq-interactive`` prints on its ``D-``
lines for the same checkpoint, except that an empty or all-blank line gives an empty line (fairseq-interactive
would invent a sentence), and a line the model cannot take (longer than its source positions) gives an empty line
and a message on stderr naming it, and the lines after it are translated (the exit status is then 1). With
``--port``: ``fairseq_bahdanau.deploy.service`` (needs ``pip install .[serve]``). In Python:

    from fairseq_bahdanau.deploy.serve import load
    translate = load("translator.onnx")
    translate(["Ein Mann fährt Fahrrad."])  # -> ["A man is riding a bike."]
    translate.details(["Ein Mann fährt Fahrrad."], beam=5, nbest=3)  # -> [Translation(...)]

This module imports neither torch nor fairseq (nor does the package at import): a deployment needs
``onnxruntime``, ``numpy`` and ``sentencepiece`` (``pip install onnxruntime numpy sentencepiece`` and
``pip install --no-deps fairseq_bahdanau``), and the translator folder.
"""

import argparse
import sys
from typing import Iterable, Iterator, List, Optional

from .text import Attention, Hypothesis, LoadedTranslator, Translation, load  # noqa: F401 (the API)

def batches(lines: Iterable[str], size: int) -> Iterator[List[str]]:
    batch: List[str] = []
    for line in lines:
        batch.append(line)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def decoded(lines: Iterable[bytes]) -> Iterator[Optional[str]]:
    """Each line of bytes as text, or None where it is not UTF-8."""
    for raw in lines:
        try:
            yield raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            yield None


def filter_lines(translate: LoadedTranslator, lines: Iterable[Optional[str]], batch_size: int) -> int:
    """The line filter: print one line per input line, in order; returns how many lines could not be
    translated (each named on stderr and printed as an empty line): too long, or not UTF-8 (None)."""
    failed = 0
    number = 0
    for batch in batches(lines, batch_size):
        pieces = [None if line is None else translate.pieces(line) for line in batch]
        too_long = ["the line is not UTF-8 text" if p is None else translate.problem(p) for p in pieces]
        done = iter(translate.translate_pieces([p for p, problem in zip(pieces, too_long) if problem is None]))
        for problem in too_long:
            number += 1
            if problem is None:
                print(next(done), flush=True)
            else:
                failed += 1
                print(f"serve: line {number} not translated: {problem}", file=sys.stderr, flush=True)
                print("", flush=True)
    return failed


def main(argv: Optional[List[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a == "--port" or a.startswith("--port=") for a in argv):  # the service parses its own options
        from . import service

        service.main(argv)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("translators", nargs="+", metavar="translator",
                        help="the file(s) fairseq_bahdanau.model.export wrote (the filter takes one)")
    parser.add_argument("--batch-size", type=int, default=1,
                        help="lines translated together (default 1, as fairseq-interactive)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: ONNX Runtime's, the machine's cores)")
    parser.add_argument("--port", type=int, help="serve HTTP on this port (the JSON API and the page) instead of "
                                                 "filtering standard input")
    parser.add_argument("--host", default="127.0.0.1", help="with --port: the address to listen on")
    args, rest = parser.parse_known_args(argv)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if len(args.translators) != 1:
        parser.error("the line filter takes one translator (several: --port)")
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    try:
        translate = load(args.translators[0], args.threads)
    except (OSError, ValueError) as error:
        parser.exit(1, f"error: {error}\n")
    if filter_lines(translate, decoded(sys.stdin.buffer), args.batch_size):
        sys.exit(1)


if __name__ == "__main__":
    main()
