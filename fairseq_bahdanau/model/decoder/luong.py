"""Luong, Pham & Manning (2015), Section 3: dot or general attention with the new state, and input feeding of the
attentional state ``~s_t``, which is also what the output layer reads:

    s_t   = GRU([E y_{t-1}; ~s_{t-1}], s_{t-1});  c_t = sum_j a_tj h_j,  a_tj = softmax_j(score(s_t, h_j))
    ~s_t  = tanh(W_c [c_t; s_t] + b_c)  ->  p(y_t | y_<t, x) = softmax(W_o deep_output(~s_t))   (eqs. 5-6)
"""

from typing import List, NamedTuple

from torch import Tensor

from .. import deferred, precision
from ..attention import LuongAttention
from ..encoder_out import EncoderOut
from .base import GRUDecoder, Shared, Step, recurrent_gates, share
from .source import AttentionSource, annotations, attention_source


class LuongState(NamedTuple):
    """The recurrent state between steps, with the attentional state fed back."""

    hidden: List[Tensor]  # one B x H tensor per layer
    feed: Tensor  # B x H: ~s_{t-1}, zero before the first step


class Reads(NamedTuple):
    """What every step of a run reads."""

    hidden_weight: Shared  # 3H x H: the first layer's W_hh
    hidden_bias: Tensor  # 3H
    feed_weight: Shared  # 3H x H: the ~s_{t-1} part of the first layer's input weights
    keys: Tensor  # B x S x Q: W_a h_j (general) or h_j (dot)
    values: Shared  # B x S x C: h_j
    mask_bias: Tensor  # B x S


class LuongGRUDecoder(GRUDecoder):
    """``--attention-type dot`` or ``general``."""

    attention_types = ("dot", "general")
    Source = AttentionSource
    State = LuongState

    def __init__(self, dictionary, embed_dim: int, hidden_size: int, num_layers: int, encoder_output_dim: int,
                 attention_type: str = "general", attention_dim: int = 0, **options) -> None:
        # attention_dim (--attention-dim) sizes additive attention's MLP; dot and general scores have none
        super().__init__(
            dictionary, embed_dim, hidden_size, num_layers, encoder_output_dim, attention_type,
            build_attention=lambda: LuongAttention(hidden_size, encoder_output_dim, attention_type),
            feed_dim=hidden_size,  # ~s_{t-1}
            features_dim=self.features_dim(hidden_size, encoder_output_dim, embed_dim),
            **options,
        )

    @staticmethod
    def features_dim(hidden_size: int, encoder_output_dim: int, embed_dim: int) -> int:
        """The output layer reads ``~s_t``."""
        return hidden_size

    def _new_source(self, encoder_out: EncoderOut, incremental: bool) -> AttentionSource:
        """keys ``W_a h_j`` (general) or ``h_j`` (dot), B x S x Q; values: the annotations, B x S x C."""
        annotated, padding_mask = annotations(encoder_out, incremental)
        return attention_source(self.attention, annotated, annotated, padding_mask)

    def _first_state(self, hidden: List[Tensor]) -> LuongState:
        return LuongState(hidden, hidden[0].new_zeros(hidden[0].size(0), self.hidden_size))

    def _reads(self, source: AttentionSource, steps: int) -> Reads:
        first = self.layers[0]
        return Reads(share(first.weight_hh, steps), precision.cast(first.bias_hh),
                     share(first.feed_weight, steps), source.keys, share(source.values, steps),
                     source.mask_bias)

    def _step(self, emb: Tensor, emb_gates: Tensor, state: LuongState, reads: Reads) -> Step:
        """Step t: ``(s_{t-1}, ~s_{t-1})`` -> ``~s_t``. emb: B x E (``E y_{t-1}``, which the output layer does not
        read); emb_gates: B x 3H, its part of the first layer's input gates (with their bias)."""
        feed_weight, values = reads.feed_weight, reads.values
        input_gates = emb_gates + deferred.linear(state.feed, feed_weight.tensor, None, feed_weight.tape)
        hidden_gates = recurrent_gates(state.hidden[0], reads.hidden_weight, reads.hidden_bias)
        hidden = self._update(input_gates, hidden_gates, state.hidden)  # s_t = GRU([E y_{t-1}; ~s_{t-1}], s_{t-1})
        context, attn = self.attention(hidden[-1], reads.keys, values.tensor, reads.mask_bias, values.tape)  # c_t
        attentional = self.attention.attentional_state(context, hidden[-1])  # ~s_t = tanh(W_c [c_t; s_t] + b_c)
        return Step(LuongState(hidden, attentional), self.dropout_module(attentional), attn)
