"""Text in, text out: an exported translator (``translator.OnnxTranslator``) with its sentencepiece model, each
line's n-best list and the best hypothesis's attention over pieces and over words. What the line filter
(``serve``) and the HTTP service (``service``) share."""

from typing import Callable, List, NamedTuple, Optional, Tuple

import numpy as np

from .translator import OnnxTranslator

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
    """Text in, text out: sentencepiece encoding, the ONNX translator (``translator``), and fairseq's
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
        decoder step; True stops the translation (``search.Cancelled``)."""
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
