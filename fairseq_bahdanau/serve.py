"""Translate with an exported translator (``fairseq_bahdanau.export``): ONNX Runtime, numpy and sentencepiece.

    python -m fairseq_bahdanau.serve translator.onnx < input.de > output.en          # the line filter
    python -m fairseq_bahdanau.serve --port 8000 attention.onnx [encdec.onnx ...]    # the HTTP service and page

The filter: one line in, one line out, in order; the output is what ``fairseq-interactive`` prints on its ``D-``
lines for the same checkpoint, except that an empty or all-blank line gives an empty line (fairseq-interactive
would invent a sentence), and a line the model cannot take (longer than its source positions) gives an empty line
and a message on stderr naming it, and the lines after it are translated (the exit status is then 1). With
``--port``: ``fairseq_bahdanau.service`` (needs ``pip install .[serve]``). In Python:

    from fairseq_bahdanau.serve import load
    translate = load("translator.onnx")
    translate(["Ein Mann fährt Fahrrad."])  # -> ["A man is riding a bike."]
    translate.details(["Ein Mann fährt Fahrrad."], beam=5, nbest=3)  # -> [Translation(...)]

This module imports neither torch nor fairseq (nor does the package at import): a deployment needs
``onnxruntime``, ``numpy`` and ``sentencepiece`` (``pip install onnxruntime numpy sentencepiece`` and
``pip install --no-deps fairseq_bahdanau``), and the translator folder.
"""

import argparse
import json
import sys
from typing import Callable, Iterable, Iterator, List, NamedTuple, Optional, Tuple

import numpy as np

from .runtime.translator import OnnxTranslator

#: the word-boundary mark of sentencepiece pieces
WORD_START = "\u2581"
#: the source's end-of-sentence token, the last column of every attention matrix
END = "</s>"


class Attention(NamedTuple):
    """An attention matrix with its labels: ``weights[t][s]`` is what target item ``t`` gave source item ``s``."""

    source: List[str]
    target: List[str]
    weights: List[List[float]]


class Hypothesis(NamedTuple):
    text: str
    score: float  # fairseq's: the length-normalised log-probability


class Translation(NamedTuple):
    """One line's result: the best translation, the n-best list (best first), and the best hypothesis's attention
    over words and over pieces (None without attention, or for an empty line); ``error`` instead of all that when
    the line could not be translated."""

    text: str
    nbest: List[Hypothesis]
    words: Optional[Attention]
    pieces: Optional[Attention]
    error: Optional[str] = None


def word_spans(pieces: List[str], sentencepiece: bool) -> List[Tuple[int, int]]:
    """[start, end) of each word in ``pieces``: a sentencepiece piece that starts with the word-boundary mark
    begins a word (a lone mark joins the piece after it); without sentencepiece every token is a word."""
    if not sentencepiece:
        return [(i, i + 1) for i in range(len(pieces))]
    spans: List[Tuple[int, int]] = []
    for i, piece in enumerate(pieces):
        starts = piece.startswith(WORD_START) and not (i > 0 and pieces[i - 1] == WORD_START)
        if starts or not spans:
            spans.append((i, i + 1))
        else:
            spans[-1] = (spans[-1][0], i + 1)
    return spans


def word_attention(pieces: Attention, sentencepiece: bool) -> Attention:
    """Attention over words from attention over pieces: the weights a target piece gave the pieces of one source
    word are *summed* (so each row still sums to 1), and the rows of the pieces of one target word are
    *averaged* (so they still sum to 1). The source's end of sentence stays a column of its own."""
    source = pieces.source[:-1]  # the last column is the end of sentence
    source_spans = word_spans(source, sentencepiece) + [(len(source), len(source) + 1)]
    target_spans = word_spans(pieces.target, sentencepiece)
    matrix = np.asarray(pieces.weights, dtype=np.float64).reshape(len(pieces.target), len(pieces.source))
    columns = np.stack([matrix[:, a:b].sum(1) for a, b in source_spans], axis=1)
    rows = [columns[a:b].mean(0) for a, b in target_spans]

    def joined(word: List[str]) -> str:
        return "".join(word).replace(WORD_START, "") if sentencepiece else word[0]

    return Attention(
        source=[joined(source[a:b]) for a, b in source_spans[:-1]] + [END],
        target=[joined(pieces.target[a:b]) for a, b in target_spans],
        weights=np.round(np.stack(rows), 6).tolist() if rows else [],
    )


class LoadedTranslator:
    """Text in, text out: sentencepiece encoding, the ONNX translator (``runtime.translator``), and fairseq's
    decoding of pieces. One instance may be used by several threads at once."""

    def __init__(self, path: str, threads: Optional[int] = None) -> None:
        self.translator = OnnxTranslator(path, threads)
        self.path = path
        self.meta = self.translator.meta
        self.sp = None
        if self.translator.sentencepiece is not None:
            import sentencepiece

            self.sp = sentencepiece.SentencePieceProcessor(model_proto=self.translator.sentencepiece)

    @property
    def max_source_positions(self) -> int:
        return self.translator.max_source_positions

    @property
    def default_beam(self) -> int:
        """The beam the translator was exported with (fairseq's default 5 where it has no record)."""
        return self.translator.default_beam

    def pieces(self, line: str) -> List[str]:
        """fairseq-interactive's reading of a line: stripped, sentencepiece pieces (or whitespace tokens)."""
        line = line.strip()
        if self.sp is None:
            return line.split()
        return " ".join(self.sp.encode(line, out_type=str)).split()

    def pieces_or_none(self, line: str) -> Optional[List[str]]:
        """``pieces(line)``, or None for a line that is not valid Unicode (a lone surrogate, as JSON's
        ``"\\ud800"`` gives): it has no UTF-8 form for sentencepiece to read."""
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:
            return None
        return self.pieces(line)

    def text(self, pieces: List[str]) -> str:
        """fairseq's decoding of pieces (``SentencepieceBPE.decode``): joined, word boundaries to spaces."""
        if self.sp is None:
            return " ".join(pieces)
        return "".join(pieces).replace(WORD_START, " ").strip()

    def problem(self, pieces: List[str]) -> Optional[str]:
        """Why a line of these pieces cannot be translated, or None."""
        if len(pieces) + 1 > self.max_source_positions:
            return (f"the line has {len(pieces)} pieces (with the end of sentence {len(pieces) + 1}), more than the "
                    f"model's {self.max_source_positions} source positions: split it")
        return None

    def __call__(self, lines: List[str]) -> List[str]:
        """Translate a batch of lines (one padded batch; see ``serve`` for one line at a time). An empty or
        all-blank line translates to an empty string (fairseq-interactive would invent a sentence for it); a line
        that is too long raises an error."""
        return self.translate_pieces([self.pieces(line) for line in lines])

    def translate_pieces(self, pieces: List[List[str]]) -> List[str]:
        """``__call__`` for lines already split into pieces."""
        todo = [i for i, p in enumerate(pieces) if p]
        out = [""] * len(pieces)
        if todo:
            for i, hypotheses in zip(todo, self.translator.translate([pieces[i] for i in todo])):
                out[i] = self.text(hypotheses[0].pieces)
        return out

    def details(self, lines: List[str], beam: Optional[int] = None, nbest: int = 1,
                stop: Optional[Callable[[], bool]] = None) -> List[Translation]:
        """Translate lines together, each with its n-best list (``nbest`` <= ``beam``) and attention. A line that
        cannot be translated (too long, or not valid Unicode) gets a ``Translation`` with ``error`` set, and the
        others are translated; an empty or all-blank line gets an empty translation. ``stop``: asked before every
        decoder step; True stops the translation (``runtime.search.Cancelled``)."""
        beam = self.default_beam if beam is None else beam
        out: List[Translation] = [Translation("", [], None, None) for _ in lines]
        pieces: List[List[str]] = []
        todo: List[int] = []
        for i, line in enumerate(lines):
            p = self.pieces_or_none(line)
            pieces.append(p or [])
            problem = "the line is not valid Unicode text (it holds a lone surrogate)" if p is None else (
                self.problem(p) if p else None)
            if problem is not None:
                out[i] = Translation("", [], None, None, error=problem)
            elif p:
                todo.append(i)
        if todo:
            results = self.translator.translate([pieces[i] for i in todo], beam, nbest, stop)
            for i, hypotheses in zip(todo, results):
                out[i] = self._translation(pieces[i], hypotheses)
        return out

    def _translation(self, source: List[str], hypotheses) -> Translation:
        nbest = [Hypothesis(self.text(target), round(float(score), 6)) for target, score, _ in hypotheses]
        target, _, matrix = hypotheses[0]
        if matrix is None:  # a model without attention
            return Translation(nbest[0].text, nbest, None, None)
        pieces = Attention(source + [END], list(target), np.round(matrix.astype(np.float64), 6).tolist())
        return Translation(nbest[0].text, nbest, word_attention(pieces, self.sp is not None), pieces)


def load(path: str, threads: Optional[int] = None) -> LoadedTranslator:
    """The translator in ``path``: call it on a list of lines for their translations (``details`` for n-best
    lists and attention)."""
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
                        help="the file(s) fairseq_bahdanau.export wrote (the filter takes one)")
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
