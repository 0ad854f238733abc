"""The attention families' source side (additive, dot, general): the attention's keys over the annotations, the
values its weights sum and the padding bias, once per sentence."""

from typing import NamedTuple, Tuple

from torch import Tensor, nn

from .. import precision
from ..attention import padding_bias
from ..encoder_out import ANNOTATIONS, PADDING_MASK, EncoderOut, row_copies


class AttentionSource(NamedTuple):
    """What an attention family computes once per sentence. In incremental decoding with beam search, one row per
    sentence, read by its group of hypotheses (see ``attention.py``). The graphs (``graphs.SOURCE_OUTPUTS``) name
    the fields; the first one's rows are the source cache's rows (``GRUDecoder.reorder_incremental_state``)."""

    keys: Tensor  # B x S x A: the attention's precomputed part
    values: Tensor  # B x S x V: what the attention weights sum (the annotations, possibly extended)
    mask_bias: Tensor  # B x S: 0, or -inf at padding


def annotations(encoder_out: EncoderOut, incremental: bool) -> Tuple[Tensor, Tensor]:
    """The annotations (B x S x C, contiguous) and the padding mask (B x S). In incremental decoding beam search's
    copies of a sentence (consecutive rows) share one row, so that the source side is neither computed nor
    reordered per hypothesis."""
    annotated = encoder_out[ANNOTATIONS][0].transpose(0, 1)
    padding_mask = encoder_out[PADDING_MASK][0]
    copies = row_copies(encoder_out)
    if incremental and copies > 1:  # B*beam x S x C -> B x S x C
        annotated, padding_mask = annotated[::copies], padding_mask[::copies]
    return annotated.contiguous(), padding_mask


def attention_source(attention: nn.Module, annotated: Tensor, values: Tensor, padding_mask: Tensor) -> AttentionSource:
    """The keys ``attention.precompute(annotated)``, the values and the padding bias, cast once for autocast (not
    at every step)."""
    keys, values = precision.cast(attention.precompute(annotated)), precision.cast(values)
    return AttentionSource(keys, values, padding_bias(padding_mask, values.dtype))
