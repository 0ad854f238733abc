"""Translation quality by source sentence length (Bahdanau et al. 2015, Figure 2), for one or more systems.

    python -m fairseq_bahdanau.analysis.length_analysis --source test.de --reference test.en \\
        --system attention=gen.attention.out --system encdec=gen.encdec.out \\
        [--width 10] [--min-sentences 30] [--bootstrap 1000] [--plot bleu_by_length.png]

Sentences are bucketed by the number of words (whitespace-separated) of their source: 1-10, 11-20, ... with
``--width 10``. A bucket with fewer than ``--min-sentences`` sentences is merged with the next longer one (the
longest with the one before it), so that no point of the figure rests on a handful of sentences; the table says
which ranges were merged. For each bucket the table gives the sentence count and each system's corpus sacreBLEU
(the default 13a tokenisation, cased unless ``--lowercase``), and with ``--bootstrap N`` its 95% interval from N
resamples of the bucket's sentences. ``--plot`` draws BLEU against length, one line per system (matplotlib).

A system's file is plain text (one hypothesis per line, in the reference's order) or ``fairseq-generate`` output,
whose ``D-`` lines (detokenized hypotheses; ``H-`` where there are none) are put back in sentence order by id. A
file is taken for ``fairseq-generate`` output only if it has such lines in their exact shape, ``D-<id>\\t<score>\\t``
(an integer id, then a tab): a plain-text line that merely starts with ``H-`` or ``D-`` ("H-bomb tests ...") is
a hypothesis like any other. Sources, references and plain-text systems are read alike, one sentence per line (a
final newline ends the last line; an empty line before it is an empty sentence, in every file).
"""

import argparse
import random
import re
import sys
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import sacrebleu


class Bucket(NamedTuple):
    low: int  # shortest source length in words
    high: int  # longest
    indices: List[int]  # the sentences' positions in the test set
    merged: bool  # whether it was merged from ranges with too few sentences


class Score(NamedTuple):
    bleu: float
    interval: Optional[Tuple[float, float]]  # 95% bootstrap interval, when asked


#: a fairseq-generate hypothesis line: ``D-<id>\t<score>\t<text>`` (detokenized) or ``H-<id>\t<score>\t<text>``
_GENERATED = re.compile(r"([DH])-(\d+)\t")


def read_lines(path: str) -> List[str]:
    """The lines of a plain-text file, one sentence each: a final newline does not start another (empty)
    sentence, but an empty line before it is one (as for ``wc -l``, when the file ends with a newline)."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def read_system(path: str, count: int, reference: Optional[str] = None) -> List[str]:
    """A system's hypotheses, in test-set order: plain text (read as :func:`read_lines` does), or fairseq-generate
    output, recognised by its ``D-<id>\\t``/``H-<id>\\t`` lines (``D-`` where there are any). ``count`` is the
    number of references (read from the file ``reference``, named in the errors when given)."""
    lines = read_lines(path)
    tagged: Dict[str, Dict[int, str]] = {}
    for line in lines:
        match = _GENERATED.match(line)
        if match:
            _score, *text = line[match.end():].split("\t", 1)
            tagged.setdefault(match.group(1), {})[int(match.group(2))] = text[0] if text else ""
    if tagged:
        found = tagged.get("D", tagged.get("H"))
        missing = [i for i in range(count) if i not in found]
        if missing:
            raise ValueError(f"{path}: fairseq-generate output without hypotheses for {len(missing)} of {count} "
                             f"sentences (e.g. id {missing[0]})")
        return [found[i] for i in range(count)]
    if len(lines) != count:
        raise ValueError(f"{path}: {len(lines)} lines, but the reference{'' if reference is None else ' ' + reference}"
                         f" has {count}")
    return lines


def buckets(lengths: Sequence[int], width: int, min_sentences: int) -> List[Bucket]:
    """Sentences bucketed by length into ranges of ``width`` words; too small buckets merged into the next
    longer one (the longest into the one before it)."""
    by_range: Dict[int, List[int]] = {}
    for i, n in enumerate(lengths):
        by_range.setdefault(max(n - 1, 0) // width, []).append(i)
    result: List[Bucket] = []
    pending: List[int] = []
    pending_low = None
    for k in sorted(by_range):
        if pending_low is None:
            pending_low = k * width + 1
        merged = bool(pending)
        pending += by_range[k]
        if len(pending) >= min_sentences:
            result.append(Bucket(pending_low, (k + 1) * width, sorted(pending), merged))
            pending, pending_low = [], None
    if pending:
        high = max(lengths[i] for i in pending)
        high = ((high - 1) // width + 1) * width
        if result:
            last = result.pop()
            result.append(Bucket(last.low, high, sorted(last.indices + pending), True))
        else:
            result.append(Bucket(pending_low, high, sorted(pending), len(pending) < min_sentences))
    return result


#: BLEU's settings: sacreBLEU's defaults for corpus BLEU (n-grams up to 4, exponential smoothing)
MAX_NGRAM_ORDER = 4
SMOOTH_METHOD = "exp"


def sentence_statistics(hypotheses: Sequence[str], references: Sequence[str],
                        lowercase: bool) -> List[List[int]]:
    """BLEU's sufficient statistics for each sentence (hypothesis and reference length, then matching and total
    n-grams for n = 1..4), tokenised once: a corpus score over any selection of sentences, such as a bootstrap
    resample, is computed from their sums (:func:`corpus_bleu`). They come from sacreBLEU's public API, the
    ``counts``, ``totals``, ``sys_len`` and ``ref_len`` of each sentence's score (``effective_order``, without
    which ``sentence_score`` warns on every call, and the smoothing change the sentence's score, not these)."""
    metric = sacrebleu.metrics.BLEU(lowercase=lowercase, max_ngram_order=MAX_NGRAM_ORDER, effective_order=True)
    statistics = []
    for hypothesis, reference in zip(hypotheses, references):
        s = metric.sentence_score(hypothesis, [reference])
        statistics.append([s.sys_len, s.ref_len] + list(s.counts) + list(s.totals))
    return statistics


def corpus_bleu(statistics: Sequence[List[int]], indices: Sequence[int]) -> float:
    """Corpus BLEU (sacreBLEU's default exponential smoothing) of the sentences at ``indices``, repeats counted:
    sacreBLEU's :meth:`BLEU.compute_bleu` of their summed statistics (lowercasing acts on the statistics, not
    here)."""
    sums = [sum(column) for column in zip(*(statistics[i] for i in indices))]
    n = MAX_NGRAM_ORDER
    return sacrebleu.metrics.BLEU.compute_bleu(sums[2:2 + n], sums[2 + n:2 + 2 * n], sums[0], sums[1],
                                               smooth_method=SMOOTH_METHOD, max_ngram_order=n).score


def score(statistics: Sequence[List[int]], indices: Sequence[int], bootstrap: int, seed: int = 12345) -> Score:
    """Corpus BLEU over ``indices`` (``statistics`` from :func:`sentence_statistics`), and with ``bootstrap`` > 0
    its 95% percentile interval from that many resamples (with replacement) of the same sentences."""
    bleu = corpus_bleu(statistics, indices)
    if bootstrap <= 0:
        return Score(bleu, None)
    rng = random.Random(seed)
    samples = []
    for _ in range(bootstrap):
        samples.append(corpus_bleu(statistics, [indices[rng.randrange(len(indices))] for _ in indices]))
    samples.sort()
    return Score(bleu, (samples[int(0.025 * (bootstrap - 1))], samples[int(0.975 * (bootstrap - 1))]))


def table(rows: List[Bucket], scores: Dict[str, List[Score]], overall: Dict[str, Score]) -> str:
    names = list(scores)
    lines = ["| source words | sentences | " + " | ".join(names) + " |",
             "|---|---|" + "---|" * len(names)]

    def cell(s: Score) -> str:
        return f"{s.bleu:.2f}" + ("" if s.interval is None else f" ({s.interval[0]:.1f}-{s.interval[1]:.1f})")

    for k, bucket in enumerate(rows):
        label = f"{bucket.low}-{bucket.high}" + (" (merged)" if bucket.merged else "")
        lines.append(f"| {label} | {len(bucket.indices)} | " + " | ".join(cell(scores[n][k]) for n in names) + " |")
    total = sum(len(b.indices) for b in rows)
    lines.append(f"| all | {total} | " + " | ".join(cell(overall[n]) for n in names) + " |")
    return "\n".join(lines)


def plot(rows: List[Bucket], scores: Dict[str, List[Score]], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    x = [(b.low + b.high) / 2 for b in rows]
    for name, values in scores.items():
        y = [s.bleu for s in values]
        line = ax.plot(x, y, marker="o", label=name)[0]
        if all(s.interval is not None for s in values):
            ax.fill_between(x, [s.interval[0] for s in values], [s.interval[1] for s in values],
                            color=line.get_color(), alpha=0.15, linewidth=0)
    ax.set_xticks(x)
    ax.set_xticklabels([f"{b.low}-{b.high}" for b in rows], rotation=30)
    ax.set_xlabel("source sentence length (words)")
    ax.set_ylabel("BLEU")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--source", required=True, help="source sentences (plain text), for their lengths")
    parser.add_argument("--reference", required=True, help="reference translations (plain text)")
    parser.add_argument("--system", action="append", required=True, metavar="NAME=PATH",
                        help="a system's hypotheses (plain text or fairseq-generate output); repeat for several")
    parser.add_argument("--width", type=int, default=10, help="bucket width in source words (default 10)")
    parser.add_argument("--min-sentences", type=int, default=30,
                        help="merge a bucket with fewer sentences into its neighbour (default 30)")
    parser.add_argument("--bootstrap", type=int, default=0, help="resamples for 95%% intervals (0: none)")
    parser.add_argument("--lowercase", action="store_true", help="case-insensitive BLEU")
    parser.add_argument("--plot", help="write the figure (PNG) here")
    parser.add_argument("--title", default="BLEU by source sentence length")
    args = parser.parse_args(argv)
    if args.width < 1 or args.min_sentences < 1 or args.bootstrap < 0:
        parser.error("--width and --min-sentences must be positive, --bootstrap >= 0")
    for system in args.system:
        if "=" not in system or not system.split("=", 1)[0]:
            parser.error(f"--system takes NAME=PATH, got {system!r}")
    return args


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    try:
        sources, references = read_lines(args.source), read_lines(args.reference)
    except OSError as e:
        raise SystemExit(f"error: {e}")
    if len(sources) != len(references):
        raise SystemExit(f"error: the source {args.source} has {len(sources)} lines, but the reference "
                         f"{args.reference} has {len(references)}")
    systems = {}
    for system in args.system:
        name, path = system.split("=", 1)
        try:
            systems[name] = read_system(path, len(references), args.reference)
        except (OSError, ValueError) as e:
            raise SystemExit(f"error: {e}")
    rows = buckets([len(s.split()) for s in sources], args.width, args.min_sentences)
    everything = list(range(len(references)))
    statistics = {name: sentence_statistics(hyps, references, args.lowercase) for name, hyps in systems.items()}
    scores = {name: [score(stats, b.indices, args.bootstrap) for b in rows] for name, stats in statistics.items()}
    overall = {name: score(stats, everything, args.bootstrap) for name, stats in statistics.items()}
    metric = sacrebleu.metrics.BLEU(lowercase=args.lowercase)
    metric.corpus_score(next(iter(systems.values())), [references])  # the signature needs one evaluation
    signature = metric.get_signature()
    print(table(rows, scores, overall))
    print(f"\nsacreBLEU {signature}; buckets of {args.width} source words, fewer than {args.min_sentences} "
          "sentences merged" + (f"; 95% intervals from {args.bootstrap} bootstrap resamples" if args.bootstrap else ""))
    if args.plot:
        plot(rows, scores, args.plot, args.title)
        print(f"figure: {args.plot}")


if __name__ == "__main__":
    main(sys.argv[1:])
