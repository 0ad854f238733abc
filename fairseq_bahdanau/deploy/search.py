"""fairseq's beam search, in numpy: what ``fairseq.sequence_generator.SequenceGenerator`` does around the model.

A line-by-line port of ``SequenceGenerator._generate`` and ``search.BeamSearch.step`` (fairseq 0.12) for an
encoder-decoder whose steps run elsewhere (ONNX Runtime: ``translator.py``), so that a translator needs neither
torch nor fairseq and still writes what ``fairseq-interactive`` writes: the same candidates (2 x beam per
sentence), the same end-of-sentence handling and finalisation, ``--lenpen``, ``--max-len-a/b``, ``--min-len``,
``--unkpen``, ``--temperature`` (applied by the model's step), ``--no-repeat-ngram-size`` (fairseq's CPU
implementation, quirks included), the scores fairseq reports (the length-normalised sum of the log-probabilities
of the target tokens and the end of sentence; float32 throughout, as fairseq computes them) and the attention of
every hypothesis (source positions x target positions, the end of sentence included).

Why a port rather than a library: the maintained searches for encoder-decoders in ONNX Runtime (its BeamSearch
contrib operator, onnxruntime-genai) are built for Transformers with key-value caches and follow Hugging Face's
semantics (early stopping, length penalty on the whole beam), which give other translations than fairseq's;
this search is fairseq's, so that an exported model translates exactly as the checkpoint does in fairseq.

Shapes: ``B`` sentences, ``K`` beam, ``N = B * K`` hypotheses (the rows the model's step sees, sentence by
sentence), ``S`` source positions, ``V`` target vocabulary, ``T`` target steps.
"""

from typing import Any, Callable, List, NamedTuple, Optional, Protocol, Tuple

import numpy as np

NEG_INF = np.float32(-np.inf)


class Cancelled(Exception):
    """The search was stopped between two decoder steps (``generate``'s ``stop``)."""


class SearchOptions(NamedTuple):
    """fairseq's generation options (``fairseq-interactive`` flags and defaults)."""

    beam: int = 5
    max_len_a: float = 0.0
    max_len_b: int = 200
    min_len: int = 1
    lenpen: float = 1.0
    unkpen: float = 0.0
    temperature: float = 1.0
    no_repeat_ngram_size: int = 0


class Vocabulary(NamedTuple):
    """The target dictionary's special symbols and size."""

    pad: int
    eos: int
    unk: int
    size: int


class Hypothesis(NamedTuple):
    """One finished hypothesis, as fairseq's generator returns it."""

    tokens: np.ndarray  # T (int64), ending in the end of sentence
    score: float  # the sum of the token log-probabilities over T ** lenpen
    positional_scores: np.ndarray  # T (float32)
    attention: Optional[np.ndarray]  # S x T (float32): the padded source's positions x the target's; None without


class StepModel(Protocol):
    """What the search needs of a model (or an ensemble): ``start`` encodes a batch of sentences for a beam of
    ``K`` (hypotheses ``b * K .. b * K + K - 1`` belong to sentence ``b``); ``step`` scores the next token of every
    hypothesis (N x V log-probabilities, temperature applied, N x S attention or None, the new state, and the
    M best log-probabilities of each hypothesis with their tokens, N x M each, or None); ``reorder`` makes row
    ``i`` of the state the old row ``order[i]`` (every block of K new rows comes from one old sentence)."""

    def start(self, src_tokens: np.ndarray, src_lengths: np.ndarray, beam: int) -> Any: ...

    def step(self, state: Any, prev_tokens: np.ndarray) -> Tuple[np.ndarray, Optional[np.ndarray], Any,
                                                                 Optional[Tuple[np.ndarray, np.ndarray]]]: ...

    def reorder(self, state: Any, order: np.ndarray) -> Any: ...


def topk(x: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest values of each row of ``x`` (R x C) and their columns, largest first (``torch.topk``)."""
    if k < x.shape[1]:
        part = np.argpartition(-x, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(x.shape[1]), x.shape).copy()
    rows = np.arange(x.shape[0])[:, None]
    values = x[rows, part]
    order = np.argsort(-values, axis=1, kind="stable")
    return values[rows, order], part[rows, order]


def block_repeated_ngrams(tokens: np.ndarray, lprobs: np.ndarray, n: int, step: int) -> None:
    """``--no-repeat-ngram-size n``: fairseq's CPU ``NGramRepeatBlock`` (it reads the whole token buffer, as
    fairseq does), in place on ``lprobs``."""
    if step + 2 - n < 0:
        return
    rows = tokens.tolist()
    for row, seq in enumerate(rows):
        check = seq[-(n - 1):]  # fairseq's slice (for n = 1 the whole row, which never matches)
        banned = [seq[i + n - 1] for i in range(step + 2 - n) if check == seq[i: i + n - 1]]
        if banned:
            lprobs[row, banned] = NEG_INF


def max_length(options: SearchOptions, src_len: int, max_decoder_positions: int) -> int:
    """The longest translation (without end of sentence) of a batch of padded width ``src_len``."""
    return min(int(options.max_len_a * src_len + options.max_len_b), max_decoder_positions - 1)


def generate(model: StepModel, src_tokens: np.ndarray, src_lengths: np.ndarray, vocab: Vocabulary,
             options: SearchOptions, max_decoder_positions: int,
             stop: Optional[Callable[[], bool]] = None) -> List[List[Hypothesis]]:
    """Beam search for a batch: ``src_tokens`` B x S (token ids, each sentence ending in end of sentence,
    padded), ``src_lengths`` B -> for each sentence its finished hypotheses, best first (``K`` of them, the beam
    being at most V - 1). ``stop``: asked before every decoder step; True raises ``Cancelled``."""
    bsz, src_len = src_tokens.shape
    beam = max(1, min(options.beam, vocab.size - 1))
    max_len = max_length(options, src_len, max_decoder_positions)
    if options.min_len > max_len:
        raise ValueError("min_len cannot be larger than max_len, please adjust these!")
    state = model.start(src_tokens, src_lengths, beam)

    scores = np.zeros((bsz * beam, max_len + 1), dtype=np.float32)
    tokens = np.full((bsz * beam, max_len + 2), vocab.pad, dtype=np.int64)
    tokens[:, 0] = vocab.eos
    attn: Optional[np.ndarray] = None
    cands_to_ignore = np.zeros((bsz, beam), dtype=bool)
    finalized: List[List[Hypothesis]] = [[] for _ in range(bsz)]
    finished = [False] * bsz
    remaining = bsz
    cand_size = 2 * beam
    bbsz_offsets = (np.arange(bsz) * beam)[:, None]
    cand_offsets = np.arange(cand_size)
    reorder_state: Optional[np.ndarray] = None
    batch_idxs: Optional[np.ndarray] = None

    for step in range(max_len + 1):  # one extra step for the end of sentence
        if stop is not None and stop():
            raise Cancelled(f"stopped before step {step}")
        if reorder_state is not None:
            if batch_idxs is not None:  # sentences left the batch: map the new rows to the old batch's rows
                corr = batch_idxs - np.arange(batch_idxs.size)
                reorder_state = (reorder_state.reshape(-1, beam) + corr[:, None] * beam).reshape(-1)
            state = model.reorder(state, reorder_state)
        lprobs, avg_attn, state, top = model.step(state, tokens[:, step])
        if avg_attn is not None:
            if attn is None:
                attn = np.zeros((bsz * beam, avg_attn.shape[1], max_len + 2), dtype=np.float32)
            attn[:, :, step + 1] = avg_attn
        if top is not None and options.no_repeat_ngram_size == 0 and (
                top[0].shape[1] >= 2 * beam + 3 or top[0].shape[1] == lprobs.shape[1]):
            cand_scores, cand_beams, cand_indices = _top_candidates(lprobs, top, scores, step, bsz, beam, vocab,
                                                                    options, max_len)
        else:
            cand_scores, cand_beams, cand_indices = _all_candidates(lprobs, tokens, scores, step, bsz, beam, vocab,
                                                                    options, max_len)

        cand_bbsz_idx = cand_beams + bbsz_offsets
        eos_mask = (cand_indices == vocab.eos) & (cand_scores != NEG_INF)
        eos_mask[:, :beam][cands_to_ignore] = False
        eos_bbsz_idx = cand_bbsz_idx[:, :beam][eos_mask[:, :beam]]
        finalized_sents: List[int] = []
        if eos_bbsz_idx.size > 0:
            eos_scores = cand_scores[:, :beam][eos_mask[:, :beam]]
            finalized_sents = _finalize(step, eos_bbsz_idx, eos_scores, tokens, scores, finalized, finished, beam,
                                        attn, max_len, vocab.eos, options.lenpen)
            remaining -= len(finalized_sents)
        if remaining == 0:
            break
        assert step < max_len, f"{step} < {max_len}"

        if finalized_sents:
            new_bsz = bsz - len(finalized_sents)
            batch_mask = np.ones(bsz, dtype=bool)
            batch_mask[finalized_sents] = False
            batch_idxs = np.arange(bsz)[batch_mask]
            eos_mask = eos_mask[batch_idxs]
            cand_beams = cand_beams[batch_idxs]
            bbsz_offsets = (np.arange(new_bsz) * beam)[:, None]
            cand_bbsz_idx = cand_beams + bbsz_offsets
            cand_scores = cand_scores[batch_idxs]
            cand_indices = cand_indices[batch_idxs]
            cands_to_ignore = cands_to_ignore[batch_idxs]
            scores = scores.reshape(bsz, -1)[batch_idxs].reshape(new_bsz * beam, -1)
            tokens = tokens.reshape(bsz, -1)[batch_idxs].reshape(new_bsz * beam, -1)
            if attn is not None:
                attn = attn.reshape(bsz, -1)[batch_idxs].reshape(new_bsz * beam, attn.shape[1], -1)
            bsz = new_bsz
        else:
            batch_idxs = None

        # the first K candidates that do not end the sentence (nor are to be ignored) go on
        eos_mask[:, :beam] = ~((~cands_to_ignore) & (~eos_mask[:, :beam]))
        active_mask = eos_mask.astype(np.int64) * cand_size + cand_offsets[: eos_mask.shape[1]]
        new_cands_to_ignore, active_hypos = topk(-active_mask, beam)
        new_cands_to_ignore = -new_cands_to_ignore
        cands_to_ignore = (new_cands_to_ignore >= cand_size)[:, :beam]
        assert (~cands_to_ignore).any(axis=1).all()

        sentences = np.arange(bsz)[:, None]
        active_bbsz_idx = cand_bbsz_idx[sentences, active_hypos].reshape(-1)
        active_scores = cand_scores[sentences, active_hypos]
        tokens[:, : step + 1] = tokens[active_bbsz_idx, : step + 1]
        tokens.reshape(bsz, beam, -1)[:, :, step + 1] = cand_indices[sentences, active_hypos]
        if step > 0:
            scores[:, :step] = scores[active_bbsz_idx, :step]
        scores.reshape(bsz, beam, -1)[:, :, step] = active_scores
        if attn is not None:
            attn[:, :, : step + 2] = attn[active_bbsz_idx, :, : step + 2]
        reorder_state = active_bbsz_idx

    out: List[List[Hypothesis]] = []
    for hypotheses in finalized:
        order = sorted(range(len(hypotheses)), key=lambda i: -hypotheses[i].score)  # stable, as torch.sort on CPU
        out.append([hypotheses[i] for i in order])
    return out


def _all_candidates(lprobs: np.ndarray, tokens: np.ndarray, scores: np.ndarray, step: int, bsz: int, beam: int,
                    vocab: Vocabulary, options: SearchOptions,
                    max_len: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The step's 2K best continuations of each sentence (scores, hypotheses within the sentence, tokens), B x 2K:
    the generator's adjustments of the N x V log-probabilities (pad, unk, the length limits, repeated n-grams)
    and ``search.BeamSearch.step``, over the whole vocabulary."""
    lprobs = np.array(lprobs, dtype=np.float32)  # a copy the search may write into
    lprobs[np.isnan(lprobs)] = NEG_INF
    lprobs[:, vocab.pad] = NEG_INF  # never select pad
    lprobs[:, vocab.unk] -= np.float32(options.unkpen)
    if step >= max_len:
        lprobs[:, : vocab.eos] = NEG_INF
        lprobs[:, vocab.eos + 1:] = NEG_INF
    elif step < options.min_len:
        lprobs[:, vocab.eos] = NEG_INF
    if options.no_repeat_ngram_size > 0:
        block_repeated_ngrams(tokens, lprobs, options.no_repeat_ngram_size, step)
    vocab_size = lprobs.shape[1]
    cand = lprobs.reshape(bsz, beam, vocab_size)
    if step == 0:
        cand = cand[:, :1, :]  # all hypotheses are equally likely: the first beam only
    else:
        cand = cand + scores.reshape(bsz, beam, -1)[:, :, step - 1][:, :, None]
    flat = cand.reshape(bsz, -1)
    cand_scores, indices = topk(flat, min(2 * beam, flat.shape[1] - 1))
    return cand_scores, indices // vocab_size, indices % vocab_size


def _top_candidates(lprobs: np.ndarray, top: Tuple[np.ndarray, np.ndarray], scores: np.ndarray, step: int,
                    bsz: int, beam: int, vocab: Vocabulary, options: SearchOptions,
                    max_len: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``_all_candidates`` from each hypothesis's M best tokens (``top``: N x M log-probabilities and tokens, M at
    least 2K + 3, from the step's graph) and its unk and end-of-sentence columns, instead of the whole vocabulary.

    The same result: a sentence's 2K best continuations come from its hypotheses' 2K best adjusted tokens, and
    the adjustments only lower pad, the end of sentence (below ``--min-len``) and unk (``--unkpen`` > 0), or
    raise unk (``--unkpen`` < 0) or keep the end of sentence alone (at the length limit): 2K + 3 tokens of a row
    and its unk and end-of-sentence columns hold them all. (Not for ``--no-repeat-ngram-size``, which lowers any
    token.)"""
    values, columns = top
    rows_all, vocab_size = lprobs.shape
    if options.unkpen >= 0 and step < max_len:  # nothing is raised: the rows' best tokens hold the candidates
        cols, vals = columns, values.astype(np.float32)  # (a copy)
        duplicate = np.zeros(cols.shape, dtype=bool)
    else:  # unk raised, or the end of sentence forced: their columns too
        extra = np.array([vocab.unk, vocab.eos], dtype=columns.dtype)
        cols = np.concatenate([columns, np.broadcast_to(extra, (rows_all, 2))], axis=1)
        vals = np.concatenate([values, lprobs[:, extra]], axis=1).astype(np.float32)
        duplicate = np.zeros(cols.shape, dtype=bool)  # an extra column that is among the row's best already
        duplicate[:, -2:] = (columns[:, :, None] == extra).any(axis=1)
    vals[np.isnan(vals)] = NEG_INF
    vals[cols == vocab.pad] = NEG_INF
    vals[cols == vocab.unk] -= np.float32(options.unkpen)
    if step >= max_len:
        vals[cols != vocab.eos] = NEG_INF
    elif step < options.min_len:
        vals[cols == vocab.eos] = NEG_INF
    vals[duplicate] = NEG_INF
    width = cols.shape[1]
    vals, cols, duplicate = (a.reshape(bsz, beam, width) for a in (vals, cols, duplicate))
    if step == 0:
        vals, cols, duplicate = vals[:, :1], cols[:, :1], duplicate[:, :1]
    else:
        vals = vals + scores.reshape(bsz, beam, -1)[:, :, step - 1][:, :, None]
    rows = vals.shape[1]
    flat_index = np.arange(rows)[None, :, None] * vocab_size + cols
    flat_index = np.where(duplicate, rows * vocab_size, flat_index).reshape(bsz, -1)  # duplicates sort last
    flat_vals = vals.reshape(bsz, -1)
    k = min(2 * beam, rows * vocab_size - 1)
    order = np.lexsort((flat_index, -flat_vals), axis=-1)[:, :k]
    sentences = np.arange(bsz)[:, None]
    chosen = flat_index[sentences, order]
    return flat_vals[sentences, order], chosen // vocab_size, chosen % vocab_size


def _finalize(step: int, bbsz_idx: np.ndarray, eos_scores: np.ndarray, tokens: np.ndarray, scores: np.ndarray,
              finalized: List[List[Hypothesis]], finished: List[bool], beam: int, attn: Optional[np.ndarray],
              max_len: int, eos: int, lenpen: float) -> List[int]:
    """``SequenceGenerator.finalize_hypos``: store the hypotheses that end here; returns the sentences (indices in
    the current, reduced batch) that are now finished (K hypotheses, or the maximum length)."""
    tokens_clone = tokens[bbsz_idx, 1: step + 2].copy()
    tokens_clone[:, step] = eos
    attn_clone = attn[bbsz_idx][:, :, 1: step + 2] if attn is not None else None
    pos_scores = scores[bbsz_idx, : step + 1].copy()
    pos_scores[:, step] = eos_scores
    pos_scores[:, 1:] = pos_scores[:, 1:] - pos_scores[:, :-1]
    eos_scores = eos_scores / np.float32((step + 1) ** lenpen)

    cum_unfin: List[int] = []
    prev = 0
    for f in finished:
        if f:
            prev += 1
        else:
            cum_unfin.append(prev)
    unfin_idx = bbsz_idx // beam
    sent = unfin_idx + np.asarray(cum_unfin, dtype=np.int64)[unfin_idx]
    for i in range(bbsz_idx.size):
        s = int(sent[i])
        if len(finalized[s]) < beam:
            finalized[s].append(Hypothesis(
                tokens=tokens_clone[i], score=float(eos_scores[i]), positional_scores=pos_scores[i],
                attention=None if attn_clone is None else attn_clone[i]))
    newly_finished: List[int] = []
    for s, u in sorted(set(zip(sent.tolist(), unfin_idx.tolist()))):
        if not finished[s] and (len(finalized[s]) == beam or step == max_len):
            finished[s] = True
            newly_finished.append(u)
    return newly_finished

