"""The RNN encoder-decoder of Cho et al. (2014), the paper's RNNencdec baseline, as a controlled ablation of the
additive model: no attention; the context is the same vector at every step, ``c = [h->_Tx; h<-_1]`` (the top
encoder layer's final states, from which the initial state is computed too):

    s_i   = GRU([E y_{i-1}; c], s_{i-1});  t_i = deep_output([s_i; c; E y_{i-1}])
"""

from typing import NamedTuple

import torch
from torch import Tensor

from .. import precision
from ..encoder_out import SUMMARY, EncoderOut
from .additive import AdditiveGRUDecoder
from .base import GRUDecoder, Shared, State, Step, recurrent_gates, share


class FixedSource(NamedTuple):
    """What the fixed context computes once per sentence, one row per hypothesis in beam search (the rows are
    3H + C wide, so reordering them costs less than grouping them would). The graphs name the fields."""

    context: Tensor  # B x C: c
    gates: Tensor  # B x 3H: W_c c, the context's share of the first layer's input gates


class Reads(NamedTuple):
    """What every step of a run reads."""

    hidden_weight: Shared  # 3H x H: the first layer's W_hh
    hidden_bias: Tensor  # 3H
    context: Tensor  # B x C
    gates: Tensor  # B x 3H


class FixedContextGRUDecoder(GRUDecoder):
    """``--attention-type none``. ``W_c c`` is computed once per sentence, so a step costs no more than the GRU."""

    attention_types = ("none",)
    Source = FixedSource

    def __init__(self, dictionary, embed_dim: int, hidden_size: int, num_layers: int, encoder_output_dim: int,
                 attention_type: str = "none", attention_dim: int = 0, **options) -> None:
        super().__init__(
            dictionary, embed_dim, hidden_size, num_layers, encoder_output_dim, attention_type,
            build_attention=lambda: None,
            feed_dim=encoder_output_dim,  # c
            features_dim=self.features_dim(hidden_size, encoder_output_dim, embed_dim),
            **options,
        )

    #: the output layer reads ``[s_i; c; E y_{i-1}]``: the additive family's sizes, c in place of c_i
    features_dim = staticmethod(AdditiveGRUDecoder.features_dim)

    def _new_source(self, encoder_out: EncoderOut, incremental: bool) -> FixedSource:
        context = encoder_out[SUMMARY][0]
        return FixedSource(precision.cast(context), precision.cast(self.layers[0].feed_gates(context)))

    def _reads(self, source: FixedSource, steps: int) -> Reads:
        first = self.layers[0]
        return Reads(share(first.weight_hh, steps), precision.cast(first.bias_hh), source.context, source.gates)

    def _step(self, emb: Tensor, emb_gates: Tensor, state: State, reads: Reads) -> Step:
        """Step i: ``s_{i-1}`` -> ``[s_i; c; E y_{i-1}]``. emb: B x E (``E y_{i-1}``); emb_gates: B x 3H, its part
        of the first layer's input gates (with their bias)."""
        hidden_gates = recurrent_gates(state.hidden[0], reads.hidden_weight, reads.hidden_bias)  # U s_{i-1} + b
        hidden = self._update(emb_gates + reads.gates, hidden_gates, state.hidden)  # s_i = GRU([E y_{i-1}; c], ..)
        features = torch.cat([self.dropout_module(hidden[-1]), reads.context, emb], dim=1)  # [s_i; c; E y_{i-1}]
        return Step(State(hidden), features, None)
