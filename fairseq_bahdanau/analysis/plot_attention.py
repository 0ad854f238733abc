"""Translate one sentence with a trained ``bahdanau_gru`` model and draw its attention weights as a heatmap.

Command line::

    python -m fairseq_bahdanau.analysis.plot_attention --path checkpoints/checkpoint_best.pt --data data-bin \\
        [--spm spm.model] [--source-lang de --target-lang en] [--beam 5] --output attention.png \\
        "ein mann fährt fahrrad ."

The sentence may be ``-`` to read it from stdin. The translation is printed to stdout; the heatmap (source
pieces on the x axis, target pieces on the y axis, ``</s>`` included on both) is written to ``--output``.
Without ``--spm`` the sentence is split on whitespace; with it, it is encoded into sentencepiece pieces, which
are what the heatmap shows.

From Python::

    from fairseq_bahdanau import BahdanauGRUModel
    from fairseq_bahdanau.analysis.plot_attention import attention_matrix, plot_attention

    hub = BahdanauGRUModel.from_pretrained("checkpoints", checkpoint_file="checkpoint_best.pt",
                                           data_name_or_path="data-bin")
    source, target, weights = attention_matrix(hub, "ein mann fährt fahrrad .")   # weights: T x S
    plot_attention(source, target, weights, "attention.png")

The weights are those of the best beam-search hypothesis, recomputed by a teacher-forced forward pass of the
first model of the hub over that hypothesis.
"""

import argparse
import logging
import os
import sys
import textwrap
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple

import numpy as np
import torch

if TYPE_CHECKING:
    from fairseq.hub_utils import GeneratorHubInterface

logger = logging.getLogger(__name__)


def attention_matrix(
    hub: "GeneratorHubInterface", sentence: str, beam: int = 5
) -> Tuple[List[str], List[str], np.ndarray]:
    """Translate ``sentence`` with beam search and return the attention of the best hypothesis.

    Args:
        hub: a ``fairseq.hub_utils.GeneratorHubInterface`` (``BahdanauGRUModel.from_pretrained(...)``).
        sentence: the raw source sentence (tokenized and BPE-encoded by the hub, if it has them).
        beam: beam size.
    Returns:
        ``(source_pieces, target_pieces, weights)``: the S source pieces (the sentence's pieces then ``</s>``),
        the T target pieces (the hypothesis's pieces then ``</s>``) and a float numpy array of shape T x S whose
        row i is the attention distribution used to predict target piece i (each row sums to 1).
    """
    src_tokens = hub.encode(sentence)  # S, ends in </s>
    source_pieces = hub.apply_bpe(hub.tokenize(sentence)).split() + [hub.src_dict[hub.src_dict.eos()]]
    if len(source_pieces) != src_tokens.numel():  # a dictionary whose line tokenizer splits differently
        source_pieces = [hub.src_dict[i] for i in src_tokens.tolist()]

    hypothesis = hub.generate([src_tokens], beam=beam)[0][0]
    tgt_tokens = hypothesis["tokens"].cpu()  # T, ends in </s>
    target_pieces = [hub.tgt_dict[i] for i in tgt_tokens.tolist()]

    model = hub.models[0]  # already in eval mode: the hub prepares its models for inference
    eos = torch.tensor([hub.tgt_dict.eos()])
    prev_output_tokens = torch.cat([eos, tgt_tokens[:-1]]).unsqueeze(0).to(hub.device)  # 1 x T
    with torch.no_grad():
        _, extra = model(
            src_tokens.unsqueeze(0).to(hub.device),  # 1 x S
            torch.tensor([src_tokens.numel()], device=hub.device),
            prev_output_tokens,
        )
    if not extra.get("attn") or extra["attn"][0] is None:
        raise ValueError("the model has no attention to plot (--attention-type none: every step reads the same "
                         "fixed context)")
    weights = extra["attn"][0][0].float().cpu().numpy()  # T x S
    return source_pieces, target_pieces, weights


def translation_text(hub: "GeneratorHubInterface", target_pieces: Sequence[str]) -> str:
    """The detokenized translation from the target pieces ``attention_matrix`` returns (``</s>`` dropped)."""
    eos = hub.tgt_dict[hub.tgt_dict.eos()]
    return hub.detokenize(hub.remove_bpe(" ".join(p for p in target_pieces if p != eos)))


def plot_attention(
    source_pieces: Sequence[str],
    target_pieces: Sequence[str],
    weights: np.ndarray,
    output: str,
    title: Optional[str] = None,
) -> None:
    """Save a heatmap of ``weights`` (T x S) as a PNG: source pieces on the x axis, target pieces on the y axis.

    Draws with matplotlib's Agg canvas directly, so it needs no display and leaves pyplot's backend alone.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows, columns = weights.shape
    if (rows, columns) != (len(target_pieces), len(source_pieces)):
        raise ValueError(f"weights are {rows} x {columns}, pieces {len(target_pieces)} x {len(source_pieces)}")
    figure = Figure(figsize=(max(4.0, 2.0 + 0.45 * columns), max(3.0, 1.8 + 0.4 * rows)))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(weights, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    axes.set_xticks(range(columns))
    axes.set_xticklabels(source_pieces, rotation=60, ha="right", rotation_mode="anchor")
    axes.set_yticks(range(rows))
    axes.set_yticklabels(target_pieces)
    axes.set_xlabel("source")
    axes.set_ylabel("target")
    if title:
        axes.set_title("\n".join(textwrap.wrap(title, width=60)), fontsize=10)
    figure.colorbar(image, ax=axes, label="attention weight")
    figure.tight_layout()
    figure.savefig(output, dpi=100)
    logger.info("wrote %s (%d target x %d source pieces)", output, rows, columns)


def load_hub(
    path: str,
    data: str,
    spm: Optional[str] = None,
    source_lang: Optional[str] = None,
    target_lang: Optional[str] = None,
) -> "GeneratorHubInterface":
    """Load a checkpoint through fairseq's hub interface, with sentencepiece when ``spm`` is given."""
    from fairseq_bahdanau import BahdanauGRUModel

    overrides = {}
    if spm:
        overrides.update(bpe="sentencepiece", sentencepiece_model=spm)
    if source_lang:
        overrides["source_lang"] = source_lang
    if target_lang:
        overrides["target_lang"] = target_lang
    return BahdanauGRUModel.from_pretrained(
        os.path.dirname(os.path.abspath(path)),
        checkpoint_file=os.path.basename(path),
        data_name_or_path=data,
        **overrides,
    )


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m fairseq_bahdanau.analysis.plot_attention",
        description="Translate a sentence and plot the attention weights of the translation.",
    )
    parser.add_argument("sentence", help="the source sentence, or - to read it from stdin")
    parser.add_argument("--path", required=True, help="a bahdanau_gru checkpoint")
    parser.add_argument("--data", required=True, help="the fairseq-preprocess directory with dict.*.txt")
    parser.add_argument("--spm", help="a sentencepiece model (default: split the sentence on whitespace)")
    parser.add_argument("--source-lang", help="source language suffix of the dictionaries")
    parser.add_argument("--target-lang", help="target language suffix of the dictionaries")
    parser.add_argument("--beam", type=int, default=5, help="beam size (default: 5)")
    parser.add_argument("--output", required=True, help="the PNG to write")
    args = parser.parse_args(argv)
    if args.sentence == "-":
        lines = [line.strip() for line in sys.stdin.read().splitlines() if line.strip()]
        if len(lines) != 1:
            parser.error(f"expected one sentence on stdin, got {len(lines)} non-empty lines")
        args.sentence = lines[0]
    if not args.sentence.strip():
        parser.error("the sentence is empty")
    return args


def main(argv: Optional[Sequence[str]] = None) -> None:
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.INFO)
    args = parse_args(argv)
    hub = load_hub(args.path, args.data, args.spm, args.source_lang, args.target_lang)
    try:
        source_pieces, target_pieces, weights = attention_matrix(hub, args.sentence, beam=args.beam)
    except ValueError as problem:
        sys.exit(f"error: {args.path}: {problem}")
    print(translation_text(hub, target_pieces))
    plot_attention(source_pieces, target_pieces, weights, args.output, title=args.sentence)


if __name__ == "__main__":
    main()
