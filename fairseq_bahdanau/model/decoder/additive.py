"""Bahdanau et al. (2015), Section 3.1 and Appendix A.2.2: additive attention with the previous state, the context
fed to the GRU and to the output layer. For target step i:

    c_i   = sum_j alpha_ij h_j,  alpha_ij = softmax_j(v^T tanh(W_a s_{i-1} + U_a h_j))   (eqs. 5-7)
    s_i   = GRU([E y_{i-1}; c_i], s_{i-1})                                                   (eq. 4, A.2.2)
    t_i   = deep_output([s_i; c_i; E y_{i-1}])  ->  p(y_i | y_<i, x) = softmax(W_o t_i)     (eq. 4; A.2.2)
"""

from typing import NamedTuple

import torch
from torch import Tensor

from .. import precision
from ..attention import AdditiveAttention
from ..encoder_out import EncoderOut
from .base import GRUDecoder, Shared, State, Step, recurrent_gates, share
from .source import AttentionSource, annotations, attention_source


class Reads(NamedTuple):
    """What every step of a run reads. ``hidden_weight`` is the first layer's ``W_hh``, stacked with the
    attention's query projection ``W_a`` when both read the same state (one decoder layer, several steps:
    ``fused_query``), so that one matrix multiply per step gives the GRU's hidden gates and the query."""

    hidden_weight: Shared  # 3H (+ A) x H
    hidden_bias: Tensor  # 3H (+ A)
    fused_query: bool
    keys: Tensor  # B x S x A: U_a h_j
    values: Shared  # B x S x (C + 3H): [h_j; W_c h_j]
    mask_bias: Tensor  # B x S


class AdditiveGRUDecoder(GRUDecoder):
    """The paper's decoder (``--attention-type additive``)."""

    attention_types = ("additive",)
    Source = AttentionSource

    def __init__(self, dictionary, embed_dim: int, hidden_size: int, num_layers: int, encoder_output_dim: int,
                 attention_type: str = "additive", attention_dim: int = 0, **options) -> None:
        super().__init__(
            dictionary, embed_dim, hidden_size, num_layers, encoder_output_dim, attention_type,
            build_attention=lambda: AdditiveAttention(hidden_size, encoder_output_dim, attention_dim or hidden_size),
            feed_dim=encoder_output_dim,  # c_i
            features_dim=self.features_dim(hidden_size, encoder_output_dim, embed_dim),
            **options,
        )

    @staticmethod
    def features_dim(hidden_size: int, encoder_output_dim: int, embed_dim: int) -> int:
        """The output layer reads ``[s_i; c_i; E y_{i-1}]``."""
        return hidden_size + encoder_output_dim + embed_dim

    def _new_source(self, encoder_out: EncoderOut, incremental: bool) -> AttentionSource:
        """keys ``U_a h_j`` (B x S x A); values ``[h_j; W_c h_j]`` (B x S x (C + 3H)), ``W_c`` being the context
        part of the first GRU layer's input weights: since ``W_c c_i = sum_j alpha_ij W_c h_j``, one weighted sum
        per step then gives both the context ``c_i`` and its contribution to the GRU's input gates, instead of a
        C x 3H matrix multiply per step."""
        annotated, padding_mask = annotations(encoder_out, incremental)
        values = torch.cat([annotated, self.layers[0].feed_gates(annotated)], dim=2)
        return attention_source(self.attention, annotated, values, padding_mask)

    def _reads(self, source: AttentionSource, steps: int) -> Reads:
        first = self.layers[0]
        weight, bias, fused = first.weight_hh, first.bias_hh, self.num_layers == 1 and steps > 1
        if fused:  # the query reads s_{i-1} too: W_a joins W_hh (for a single step not worth the copy)
            query_weight = self.attention.query_weight()  # A x H
            weight, bias = torch.cat([weight, query_weight]), torch.cat([bias, bias.new_zeros(query_weight.size(0))])
        return Reads(share(weight, steps), precision.cast(bias), fused, source.keys,
                     share(source.values, steps), source.mask_bias)

    def _step(self, emb: Tensor, emb_gates: Tensor, state: State, reads: Reads) -> Step:
        """Step i: ``s_{i-1}`` -> ``[s_i; c_i; E y_{i-1}]``. emb: B x E (``E y_{i-1}``); emb_gates: B x 3H, its
        part of the first layer's input gates (with their bias)."""
        hidden_gates = recurrent_gates(state.hidden[0], reads.hidden_weight, reads.hidden_bias)  # U s_{i-1} + b
        # c_i from s_{i-1} (eqs. 5-7); the values are [h_j; W_c h_j], so the weighted sum is [c_i; W_c c_i]
        if reads.fused_query:  # W_a s_{i-1} came with U s_{i-1}
            hidden_gates, query = hidden_gates.split([3 * self.hidden_size, self.attention.attention_dim], dim=1)
            extended, attn = self.attention.attend(query, reads.keys, reads.values.tensor, reads.mask_bias,
                                                   reads.values.tape)
        else:
            extended, attn = self.attention(state.hidden[-1], reads.keys, reads.values.tensor, reads.mask_bias,
                                            reads.values.tape)
        context, context_gates = extended.split([self.encoder_output_dim, 3 * self.hidden_size], dim=1)
        hidden = self._update(emb_gates + context_gates, hidden_gates, state.hidden)  # s_i (eq. 4)
        features = torch.cat([self.dropout_module(hidden[-1]), context, emb], dim=1)  # [s_i; c_i; E y_{i-1}]
        return Step(State(hidden), features, attn)
