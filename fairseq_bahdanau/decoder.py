"""The attention GRU decoder (Bahdanau et al. 2015, Section 3.1 and Appendix A.2.2; Luong et al. 2015, Section 3).

Additive attention (the paper), for target step i with previous state ``s_{i-1}`` and input token ``y_{i-1}``:

    c_i   = sum_j alpha_ij h_j,  alpha_ij = softmax_j(v^T tanh(W s_{i-1} + U h_j))       (eqs. 5-7)
    s_i   = GRU([E y_{i-1}; c_i], s_{i-1})                                                   (eq. 4, A.2.2)
    t_i   = deep_output([s_i; c_i; E y_{i-1}])  ->  p(y_i | y_<i, x) = softmax(W_o t_i)     (eq. 4; A.2.2)

Dot / general attention (Luong), with input feeding of the attentional state ``~s``:

    s_t   = GRU([E y_{t-1}; ~s_{t-1}], s_{t-1});  c_t from score(s_t, h_j);
    ~s_t  = tanh(W_c [c_t; s_t] + b_c)  ->  p(y_t | y_<t, x) = softmax(W_o deep_output(~s_t))

Everything that does not depend on the previous step is kept out of the step loop: the attention keys (once per
sentence, cached across incremental steps), the embedding part of the first GRU layer's input gates (one matrix
multiply for all steps) and the whole output layer (applied once after the loop). Teacher forcing with a ratio
below 1 is the only mode that needs the output layer inside the loop.
"""

from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from fairseq.models import FairseqIncrementalDecoder
from torch import Tensor, nn

from . import deferred, precision
from .attention import build_attention, padding_bias
from .dropout import drop_words, dropout
from .encoder import EncoderOut, build_embedding, row_copies

IncrementalState = Dict[str, Dict[str, Optional[Tensor]]]


def gru_update(input_gates: Tensor, hidden_gates: Tensor, hidden: Tensor) -> Tensor:
    """One GRU update from precomputed gates, with ``torch.nn.GRUCell``'s equations and weight layout.

    ``r = sigmoid(W_ir x + U_r h)``, ``z = sigmoid(W_iz x + U_z h)``, ``n = tanh(W_in x + r * (U_n h))``,
    ``h' = (1 - z) * n + z * h``. input_gates: B x 3H (``W_i x + b_i``), hidden_gates: B x 3H (``U h + b_h``),
    hidden: B x H -> B x H.
    """
    i_r, i_z, i_n = input_gates.chunk(3, dim=1)
    h_r, h_z, h_n = hidden_gates.chunk(3, dim=1)
    reset = torch.sigmoid(i_r + h_r)
    update = torch.sigmoid(i_z + h_z)
    candidate = torch.tanh(i_n + reset * h_n)
    return candidate + update * (hidden - candidate)


def _select(cache: Dict[str, Optional[Tensor]], order: Tensor) -> Dict[str, Optional[Tensor]]:
    return {k: (None if v is None else v.index_select(0, order)) for k, v in cache.items()}


class StepWeights(NamedTuple):
    """What every step reads, arranged once per forward call (not per step).

    ``hidden_weight`` is the first layer's ``W_hh``, stacked with the additive attention's query projection ``W_a``
    when both read the same state (one decoder layer), so that one matrix multiply per step gives both the GRU's
    hidden gates and the attention query. The tapes (see ``deferred``) collect the per-step factors of the
    gradients of the hidden weight, the feed weight and the attention values in a teacher-forced forward.
    """

    feed_weight: Tensor  # 3H x H: the ~s_{t-1} part of the first layer's input weights (Luong)
    hidden_weight: Tensor  # 3H (+ A) x H
    hidden_bias: Tensor  # 3H (+ A)
    fused_query: bool
    feed_tape: Optional[deferred.Tape] = None
    hidden_tape: Optional[deferred.Tape] = None
    values_tape: Optional[deferred.Tape] = None


class BahdanauGRUDecoder(FairseqIncrementalDecoder):
    """GRU decoder with additive (default) or Luong attention, a deep output layer and incremental decoding."""

    def __init__(
        self,
        dictionary,
        embed_dim: int,
        hidden_size: int,
        num_layers: int,
        encoder_output_dim: int,
        attention_type: str = "additive",
        attention_dim: int = 0,
        out_embed_dim: int = 0,
        output_activation: str = "linear",
        dropout: float = 0.5,
        share_input_output_embed: bool = False,
        teacher_forcing_ratio: float = 1.0,
        max_positions: int = 1024,
        word_dropout: float = 0.0,
    ) -> None:
        super().__init__(dictionary)
        self.dropout = dropout
        self.word_dropout = word_dropout
        self.embed_dim = embed_dim
        self.hidden_size = hidden_size
        self.encoder_output_dim = encoder_output_dim
        self.num_layers = num_layers
        self.teacher_forcing_ratio = teacher_forcing_ratio
        self.max_target_positions = max_positions
        self.output_activation = output_activation

        self.embed_tokens = build_embedding(dictionary, embed_dim)
        self.attention = build_attention(attention_type, hidden_size, encoder_output_dim, attention_dim)
        self.additive = attention_type == "additive"
        # What the first layer reads beside the embedding: the context c_i (additive) or ~s_{t-1} (Luong).
        self.feed_dim = encoder_output_dim if self.additive else hidden_size
        self.layers = nn.ModuleList(
            [
                nn.GRUCell(embed_dim + self.feed_dim if i == 0 else hidden_size, hidden_size)
                for i in range(num_layers)
            ]
        )
        # The output layer reads [s_i; c_i; E y_{i-1}] (additive) or ~s_t (Luong).
        features_dim = hidden_size + encoder_output_dim + embed_dim if self.additive else hidden_size
        if out_embed_dim > 0:
            width = 2 * out_embed_dim if output_activation == "maxout" else out_embed_dim
            self.deep_output: Optional[nn.Linear] = nn.Linear(features_dim, width)
            features_dim = out_embed_dim
        else:
            self.deep_output = None
        self.output_projection = nn.Linear(features_dim, len(dictionary))
        if share_input_output_embed:
            if features_dim != embed_dim:
                raise ValueError(
                    "--share-decoder-input-output-embed needs --decoder-out-embed-dim == --decoder-embed-dim"
                )
            self.output_projection.weight = self.embed_tokens.weight

    # ------------------------------------------------------------------ fairseq interface

    def forward(
        self,
        prev_output_tokens: Tensor,
        encoder_out: Optional[EncoderOut] = None,
        incremental_state: Optional[IncrementalState] = None,
        features_only: bool = False,
        **kwargs,
    ) -> Tuple[Tensor, Dict[str, List[Tensor]]]:
        """Score the next token at every target position.

        Args:
            prev_output_tokens: B x T previous tokens (teacher forcing); in incremental mode only the last column
                is read, and the state of the earlier ones comes from ``incremental_state``.
            encoder_out: the encoder's dict.
            incremental_state: fairseq's per-generation cache, or None for a full forward.
            features_only: return the output layer's input features (B x T x F) instead of logits.
        Returns:
            logits B x T x V and ``{"attn": [B x T x S]}``.
        """
        assert encoder_out is not None, "the decoder needs encoder_out"
        if incremental_state is not None:
            prev_output_tokens = prev_output_tokens[:, -1:]
        keys, values, mask_bias = self._source_cache(encoder_out, incremental_state)
        hidden, feed = self._initial_state(encoder_out, incremental_state)

        emb = self._embed(prev_output_tokens)
        scheduled = self.training and self.teacher_forcing_ratio < 1.0
        if scheduled and not features_only and incremental_state is None:
            return self._forward_scheduled(emb, hidden, feed, keys, values, mask_bias)

        outputs, feeds, attn, hidden, feed = self._run(emb, hidden, feed, keys, values, mask_bias)
        if incremental_state is not None:
            self._save_state(incremental_state, hidden, feed)
        features = self._features(outputs, feeds, emb)
        if features_only:
            return features, {"attn": [attn]}
        return self.output_layer(features), {"attn": [attn]}

    def extract_features(self, prev_output_tokens, encoder_out=None, incremental_state=None, **kwargs):
        return self.forward(prev_output_tokens, encoder_out, incremental_state, features_only=True)

    def output_layer(self, features: Tensor) -> Tensor:
        """Deep output then vocabulary projection: ... x F -> ... x V."""
        x = features
        if self.deep_output is not None:
            x = self.deep_output(x)
            if self.output_activation == "maxout":  # t_i = [max(t~_{2j-1}, t~_{2j})]_j  (Appendix A.2.2)
                x = x.view(*x.shape[:-1], -1, 2).amax(dim=-1)
            elif self.output_activation == "tanh":
                x = torch.tanh(x)
            x = dropout(x, self.dropout, self.training)
        return self.output_projection(x)

    def reorder_incremental_state(self, incremental_state: IncrementalState, new_order: Tensor) -> None:
        """Beam search: select and reorder every cached per-sentence tensor along its batch axis.

        The source-side cache may hold one row per group of hypotheses that share a source sentence (see
        ``_source_cache``); a reorder that keeps the groups together then selects groups, and any other reorder
        expands it to one row per hypothesis."""
        state = self.get_incremental_state(incremental_state, "state")
        if state is None:
            return
        source = self.get_incremental_state(incremental_state, "source")
        if source is not None:
            group = state["hidden"].size(0) // source["keys"].size(0)
            owners = new_order // group  # the source row of every new hypothesis
            if group > 1 and new_order.numel() % group == 0:
                grouped = owners.view(-1, group)
                if torch.equal(grouped, grouped[:, :1].expand_as(grouped)):
                    owners = grouped[:, 0]
            if not torch.equal(owners, torch.arange(source["keys"].size(0), device=owners.device)):
                self.set_incremental_state(incremental_state, "source", _select(source, owners))
        self.set_incremental_state(incremental_state, "state", _select(state, new_order))

    def max_positions(self) -> int:
        return self.max_target_positions

    # ------------------------------------------------------------------ the recurrence

    def _source_cache(
        self, encoder_out: EncoderOut, incremental_state: Optional[IncrementalState]
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """What depends only on the source, computed once per sentence and, in incremental decoding, cached for
        all later steps: attention keys (B x S x A), values and the padding bias (B x S: 0, or -inf at padding).

        Values are the annotations ``h_j`` (B x S x C). For additive attention they are extended to
        ``[h_j; W_c h_j]`` (B x S x (C + 3H)), ``W_c`` being the context part of the first GRU layer's input
        weights: since ``W_c c_i = sum_j alpha_ij W_c h_j``, one weighted sum per step then gives both the context
        ``c_i`` and its contribution to the GRU's input gates, instead of a C x 3H matrix multiply per step.
        """
        if incremental_state is not None:
            cached = self.get_incremental_state(incremental_state, "source")
            if cached is not None:
                return cached["keys"], cached["values"], cached["mask_bias"]
        values = encoder_out["encoder_out"][0].transpose(0, 1)
        padding_mask = encoder_out["encoder_padding_mask"][0]
        copies = row_copies(encoder_out)
        if incremental_state is not None and copies > 1:
            # Beam search: keep one row per sentence (B*beam x S x C -> B x S x C), so that the source side is
            # computed once per sentence and never copied when hypotheses are reordered.
            values, padding_mask = values[::copies], padding_mask[::copies]
        values = values.contiguous()
        keys = self.attention.precompute(values)
        if self.additive:
            context_weight = self.layers[0].weight_ih[:, self.embed_dim :]
            values = torch.cat([values, F.linear(values, context_weight)], dim=2)
        keys, values = precision.cast(keys), precision.cast(values)  # once, not at every step (autocast)
        mask_bias = padding_bias(padding_mask, values.dtype)
        if incremental_state is not None:
            self.set_incremental_state(
                incremental_state, "source", {"keys": keys, "values": values, "mask_bias": mask_bias}
            )
        return keys, values, mask_bias

    def _initial_state(
        self, encoder_out: EncoderOut, incremental_state: Optional[IncrementalState]
    ) -> Tuple[Tensor, Tensor]:
        """Hidden state B x L x H and Luong input feed B x H (zeros at the start; unused for additive)."""
        if incremental_state is not None:
            cached = self.get_incremental_state(incremental_state, "state")
            if cached is not None:
                return cached["hidden"], cached["feed"]
        hidden = encoder_out["decoder_init"][0]
        feed = hidden.new_zeros(hidden.size(0), self.hidden_size if not self.additive else 0)
        return hidden, feed

    def _save_state(self, incremental_state: IncrementalState, hidden: Tensor, feed: Tensor) -> None:
        self.set_incremental_state(incremental_state, "state", {"hidden": hidden, "feed": feed})

    def _step_weights(self, steps: int, values: Tensor) -> Tuple[StepWeights, Tensor]:
        """Arrange the step's weights for ``steps`` steps (fusing costs a weight copy: worth it for many steps,
        not for the single step of an incremental call). For several steps under autograd, the weights and the
        attention values (returned, to be read instead of ``values``) are shared through ``deferred`` tapes."""
        first = self.layers[0]
        feed_weight, hidden_weight, hidden_bias = first.weight_ih[:, self.embed_dim :], first.weight_hh, first.bias_hh
        fused = self.additive and self.num_layers == 1 and steps > 1
        if fused:
            query_proj = self.attention.query_proj.weight
            hidden_weight = torch.cat([hidden_weight, query_proj], dim=0)
            hidden_bias = torch.cat([hidden_bias, hidden_bias.new_zeros(query_proj.size(0))])
        # under autocast, cast once here rather than at every step (a no-op otherwise)
        feed_weight, hidden_weight, hidden_bias = map(precision.cast, (feed_weight, hidden_weight, hidden_bias))
        if steps == 1:
            return StepWeights(feed_weight, hidden_weight, hidden_bias, fused), values
        hidden_weight, hidden_tape = deferred.share(hidden_weight)
        feed_tape = None
        if not self.additive:
            feed_weight, feed_tape = deferred.share(feed_weight)
        values, values_tape = deferred.share(values)
        weights = StepWeights(feed_weight, hidden_weight, hidden_bias, fused, feed_tape, hidden_tape, values_tape)
        return weights, values

    def _run(
        self,
        emb: Tensor,
        hidden: Tensor,
        feed: Tensor,
        keys: Tensor,
        values: Tensor,
        mask_bias: Tensor,
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Teacher-forced recurrence over all T steps.

        Args:
            emb: B x T x E embedded input tokens; hidden: B x L x H; feed: B x H (Luong) or B x 0;
            keys, values, mask_bias: from ``_source_cache``.
        Returns:
            outputs B x T x H (s_i, or ~s_t for Luong), contexts B x T x C (additive; empty for Luong),
            attention B x T x S, final hidden B x L x H, final feed.
        """
        first = self.layers[0]
        weights, values = self._step_weights(emb.size(1), values)
        # The embedding part of the first layer's input gates, for every step at once.
        emb_gates = F.linear(emb, first.weight_ih[:, : self.embed_dim], first.bias_ih)  # B x T x 3H
        states = list(hidden.unbind(1))
        outputs, contexts, attns = [], [], []
        # unbind, not emb_gates[:, t]: the backward of one indexing per step would zero-fill B x T x 3H each time
        for step_gates in emb_gates.unbind(1):
            states, feed, output, context, attn = self._step(
                step_gates, weights, states, feed, keys, values, mask_bias
            )
            outputs.append(output)
            contexts.append(context)
            attns.append(attn)
        return (
            torch.stack(outputs, dim=1),
            torch.stack(contexts, dim=1),
            torch.stack(attns, dim=1),
            torch.stack(states, dim=1),
            feed,
        )

    def _step(
        self,
        emb_gates: Tensor,
        weights: StepWeights,
        states: List[Tensor],
        feed: Tensor,
        keys: Tensor,
        values: Tensor,
        mask_bias: Tensor,
    ) -> Tuple[List[Tensor], Tensor, Tensor, Tensor, Tensor]:
        """One decoder step for the batch.

        Args:
            emb_gates: B x 3H, the embedding part of the first layer's input gates (with its bias);
            states: L tensors B x H; feed: B x H (Luong's ~s_{t-1}) or B x 0.
        Returns:
            new states, new feed, output (s_i or ~s_t, B x H), context (B x C; B x 0 for Luong), attention B x S.
        """
        hidden_gates = deferred.linear(states[0], weights.hidden_weight, weights.hidden_bias, weights.hidden_tape)
        if self.additive:
            # c_i from s_{i-1}, then s_i = GRU([E y_{i-1}; c_i], s_{i-1})
            if weights.fused_query:
                hidden_gates, query = hidden_gates.split(
                    [3 * self.hidden_size, hidden_gates.size(1) - 3 * self.hidden_size], dim=1
                )
            else:
                query = self.attention.query_proj(states[-1])
            # values are [h_j; W_c h_j]: the weighted sum gives [c_i; W_c c_i]
            extended, attn = self.attention.attend(query, keys, values, mask_bias, weights.values_tape)
            context, context_gates = extended.split([self.encoder_output_dim, 3 * self.hidden_size], dim=1)
            input_gates = emb_gates + context_gates
        else:
            input_gates = emb_gates + deferred.linear(feed, weights.feed_weight, None, weights.feed_tape)
        new_states = [gru_update(input_gates, hidden_gates, states[0])]
        for layer, state in zip(self.layers[1:], states[1:]):
            below = dropout(new_states[-1], self.dropout, self.training)
            new_states.append(layer(below, state))
        top = new_states[-1]
        if self.additive:
            return new_states, feed, top, context, attn
        # Luong: attend with s_t, then ~s_t = tanh(W_c [c_t; s_t] + b_c) is both the output and the next feed.
        context, attn = self.attention(top, keys, values, mask_bias, weights.values_tape)
        attentional = self.attention.attentional_state(context, top)
        return new_states, attentional, attentional, context[:, :0], attn

    def _embed(self, tokens: Tensor) -> Tensor:
        """Input embeddings with word dropout and dropout: B x T -> B x T x E."""
        emb = drop_words(self.embed_tokens(tokens), self.word_dropout, self.training)
        return dropout(emb, self.dropout, self.training)

    def _features(self, outputs: Tensor, contexts: Tensor, emb: Tensor) -> Tensor:
        """The output layer's input: [s_i; c_i; E y_{i-1}] (additive) or ~s_t (Luong). B x T x F."""
        outputs = dropout(outputs, self.dropout, self.training)
        if self.additive:
            return torch.cat([outputs, contexts, emb], dim=-1)
        return outputs

    def _forward_scheduled(
        self,
        emb: Tensor,
        hidden: Tensor,
        feed: Tensor,
        keys: Tensor,
        values: Tensor,
        mask_bias: Tensor,
    ) -> Tuple[Tensor, Dict[str, List[Tensor]]]:
        """Training with ``--teacher-forcing-ratio < 1``: at each step after the first, feed the reference token
        with that probability and otherwise the model's own greedy prediction (one coin per step for the whole
        batch, from torch's seeded generator, as in the reference notebook)."""
        first = self.layers[0]
        emb_weight = first.weight_ih[:, : self.embed_dim]
        weights, values = self._step_weights(emb.size(1), values)
        use_reference = torch.rand(emb.size(1)) < self.teacher_forcing_ratio
        states = list(hidden.unbind(1))
        logits, attns = [], []
        steps = emb.unbind(1)
        step_emb = steps[0]
        for t in range(emb.size(1)):
            if t > 0:
                if use_reference[t]:
                    step_emb = steps[t]
                else:
                    predicted = logits[-1].argmax(dim=-1)
                    step_emb = self._embed(predicted.unsqueeze(1)).squeeze(1)
            gates = F.linear(step_emb, emb_weight, first.bias_ih)
            states, feed, output, context, attn = self._step(gates, weights, states, feed, keys, values, mask_bias)
            features = self._features(output.unsqueeze(1), context.unsqueeze(1), step_emb.unsqueeze(1))
            logits.append(self.output_layer(features).squeeze(1))
            attns.append(attn)
        return torch.stack(logits, dim=1), {"attn": [torch.stack(attns, dim=1)]}
