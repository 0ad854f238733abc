"""The attention GRU decoders (Bahdanau et al. 2015, Section 3.1 and Appendix A.2.2; Luong et al. 2015, Section 3).

``GRUDecoder`` owns what every family shares: the embeddings, the GRU layers, the output layer, the step loop
(teacher-forced, incremental, or with scheduled feeding), the incremental cache and its reordering. Each family
is a subclass that says what differs: what it computes once per sentence (its part of ``Source``), one step, and
what the output layer reads:

| family | attention runs | with the query | the first GRU layer is fed | output layer reads |
|---|---|---|---|---|
| ``AdditiveGRUDecoder`` (paper) | before GRU update | ``s_{i-1}`` | ``[E y_{i-1}; c_i]`` | ``[s_i; c_i; E y_{i-1}]`` |
| ``LuongGRUDecoder`` (dot, general) | after GRU update | ``s_t`` | ``[E y_{t-1}; ~s_{t-1}]`` | ``~s_t`` |
| ``FixedContextGRUDecoder`` (none) | never | | ``[E y_{i-1}; c]`` | ``[s_i; c; E y_{i-1}]`` |

Additive attention, for target step i:

    c_i   = sum_j alpha_ij h_j,  alpha_ij = softmax_j(v^T tanh(W s_{i-1} + U h_j))       (eqs. 5-7)
    s_i   = GRU([E y_{i-1}; c_i], s_{i-1})                                                   (eq. 4, A.2.2)
    t_i   = deep_output([s_i; c_i; E y_{i-1}])  ->  p(y_i | y_<i, x) = softmax(W_o t_i)     (eq. 4; A.2.2)

No attention (the paper's RNNencdec baseline, Cho et al. 2014): ``c = [h->_Tx; h<-_1]`` at every step, else as
additive attention.

Dot / general attention, with input feeding of the attentional state ``~s``:

    s_t   = GRU([E y_{t-1}; ~s_{t-1}], s_{t-1});  c_t from score(s_t, h_j);
    ~s_t  = tanh(W_c [c_t; s_t] + b_c)  ->  p(y_t | y_<t, x) = softmax(W_o deep_output(~s_t))

Everything that does not depend on the previous step is kept out of the step loop: the attention keys (once per
sentence, cached across incremental steps), the embedding part of the first GRU layer's input gates (one matrix
multiply for all steps) and the whole output layer (applied once after the loop). Scheduled feeding
(``--teacher-forcing-ratio`` below 1) is the only mode that needs the output layer inside the loop: it runs a
loop of its own over the same step (``GRUDecoder._run_scheduled``, training only).

Deployment exports the family's step as an ONNX graph (``graphs.py``), which calls ``_new_source``, ``_step``,
``_features`` and ``output_layer`` as they are.
"""

from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import torch
from fairseq.models import FairseqIncrementalDecoder
from torch import Tensor, nn

from . import deferred, precision
from .attention import AdditiveAttention, LuongAttention, padding_bias
from .dropout import Dropout, drop_words
from .encoder import build_embedding
from .encoder_out import (ANNOTATIONS, DECODER_INIT, PADDING_MASK, SUMMARY, EncoderOut, block_owners,
                          row_copies)
from .gru import FedGRUCell, NormGRUCell

IncrementalState = Dict[str, Dict[str, Optional[Tensor]]]


def _projection_dim(out_embed_dim: int, features_dim: int) -> int:
    """What the vocabulary projection reads: the deep output (``out_embed_dim``, 0 for none) or the features."""
    return out_embed_dim if out_embed_dim > 0 else features_dim


def _select(cache: Dict[str, Optional[Tensor]], order: Tensor) -> Dict[str, Optional[Tensor]]:
    """Every cached tensor's rows in ``order``."""
    selected: Dict[str, Optional[Tensor]] = {}
    for key, value in cache.items():
        selected[key] = None if value is None else value.index_select(0, order)
    return selected


def _cached(cache: Dict[str, Optional[Tensor]], key: str) -> Tensor:
    """A tensor the incremental cache must hold."""
    value = cache[key]
    assert value is not None, key
    return value


class Source(NamedTuple):
    """What depends only on the source sentence, computed once per sentence (``_new_source``) and, in incremental
    decoding, cached (the fields that are not None) and reordered with the hypotheses.

    Attention families (additive, dot, general) fill ``keys``, ``values`` and ``mask_bias``; rows may then be one
    per group of hypotheses that share a sentence (beam search; see attention.py). The fixed context fills
    ``values`` (the context ``c``, B x C) and ``gates`` (``W_c c``, B x 3H), one row per hypothesis."""

    values: Tensor  # B x S x V: what the attention weights sum (the annotations, possibly extended); or c, B x C
    keys: Optional[Tensor] = None  # B x S x A: the attention's precomputed part
    mask_bias: Optional[Tensor] = None  # B x S: 0, or -inf at padding
    gates: Optional[Tensor] = None  # B x 3H: the fixed context's share of the first layer's input gates


class StepWeights(NamedTuple):
    """What every step reads, arranged once per forward call (not per step).

    ``hidden_weight`` is the first layer's ``W_hh``, stacked with the additive attention's query projection ``W_a``
    when both read the same state (one decoder layer), so that one matrix multiply per step gives both the GRU's
    hidden gates and the attention query. The tapes (see ``deferred``) collect the per-step factors of the
    gradients of the hidden weight, the feed weight and the attention values in a multi-step forward.
    """

    hidden_weight: Tensor  # 3H (+ A) x H
    hidden_bias: Tensor  # 3H (+ A)
    fused_query: bool
    feed_weight: Optional[Tensor] = None  # 3H x H: the ~s_{t-1} part of the first layer's input weights (Luong)
    feed_tape: Optional[deferred.Tape] = None
    hidden_tape: Optional[deferred.Tape] = None
    values_tape: Optional[deferred.Tape] = None


class State(NamedTuple):
    """The recurrent state between steps."""

    hidden: List[Tensor]  # one B x H tensor per layer
    feed: Optional[Tensor]  # Luong's ~s_{t-1} (B x H); None for additive attention


class Step(NamedTuple):
    """One step's results."""

    state: State
    output: Tensor  # B x H: s_i (additive) or ~s_t (Luong)
    context: Optional[Tensor]  # B x C: c_i, which the additive output layer reads; None for Luong
    attn: Optional[Tensor]  # B x S; None without attention


class Run(NamedTuple):
    """A run of T steps."""

    outputs: Tensor  # B x T x H
    contexts: Optional[Tensor]  # B x T x C (additive) or None
    attn: Optional[Tensor]  # B x T x S; None without attention
    state: State  # after the last step
    inputs: Tensor  # B x T x E: the embeddings that were fed (with scheduled feeding, some are predictions')



class GRUDecoder(FairseqIncrementalDecoder):
    """GRU decoder with a deep output layer and incremental decoding: the step loop, the incremental cache and its
    reordering, shared by every family. A family (subclass) passes its own parts to ``__init__`` (its attention
    module, the size of what its first GRU layer is fed, the size of what its output layer reads) and defines
    ``_new_source`` and ``_step``, and ``_features`` where its output layer reads something else than the paper's
    ``[s_i; c_i; E y_{i-1}]``."""

    def __init__(
        self,
        dictionary,
        embed_dim: int,
        hidden_size: int,
        num_layers: int,
        encoder_output_dim: int,
        attention_type: str,
        build_attention: Callable[[], Optional[nn.Module]],
        feed_dim: int,
        features_dim: int,
        out_embed_dim: int = 0,
        output_activation: str = "linear",
        dropout: float = 0.5,
        share_input_output_embed: bool = False,
        teacher_forcing_ratio: float = 1.0,
        max_positions: int = 1024,
        word_dropout: float = 0.0,
        layer_norm: bool = False,
    ) -> None:
        """``build_attention`` makes the family's attention module (or None), called after the embeddings are
        made (so that parameters are made, and drawn from the seeded generator, in the same order for every
        family); ``feed_dim``: the size of what the first GRU layer reads beside the embedding; ``features_dim``:
        the size of the output layer's input (before the deep output)."""
        super().__init__(dictionary)
        self.attention_type = attention_type
        self.dropout_module = Dropout(dropout, module_name=type(self).__name__)
        self.word_dropout = word_dropout
        self.embed_dim = embed_dim
        self.hidden_size = hidden_size
        self.encoder_output_dim = encoder_output_dim
        self.num_layers = num_layers
        self.teacher_forcing_ratio = teacher_forcing_ratio
        self.max_target_positions = max_positions
        self.output_activation = output_activation

        self.embed_tokens = build_embedding(dictionary, embed_dim)
        self.attention = build_attention()
        upper = NormGRUCell if layer_norm else nn.GRUCell
        self.layers = nn.ModuleList(
            [FedGRUCell(embed_dim, feed_dim, hidden_size, layer_norm)]
            + [upper(hidden_size, hidden_size) for _ in range(num_layers - 1)]
        )
        if out_embed_dim > 0:
            width = 2 * out_embed_dim if output_activation == "maxout" else out_embed_dim
            self.deep_output: Optional[nn.Linear] = nn.Linear(features_dim, width)
        else:
            self.deep_output = None
        projection_dim = _projection_dim(out_embed_dim, features_dim)
        self.output_projection = nn.Linear(projection_dim, len(dictionary))
        if share_input_output_embed:  # model.check_tying has checked the sizes, naming the flags
            assert projection_dim == embed_dim, (projection_dim, embed_dim)
            self.output_projection.weight = self.embed_tokens.weight

    # ------------------------------------------------------------------ what a family defines

    def _new_source(self, encoder_out: EncoderOut, incremental: bool) -> Source:
        """The source side of a new batch, computed once per sentence (see ``Source``). ``incremental``: for
        incremental decoding, where beam search's copies of a sentence (consecutive rows) may share one row."""
        raise NotImplementedError

    def _step(self, emb_gates: Tensor, weights: StepWeights, state: State, source: Source) -> Step:
        """One decoder step for the batch. emb_gates: B x 3H, the embedding part of the first layer's input gates
        (with its bias)."""
        raise NotImplementedError

    def _initial_feed(self, hidden: Tensor) -> Optional[Tensor]:
        """The first step's feed, for a batch whose initial state is ``hidden`` (B x L x H): none by default."""
        return None

    def _weights(self, steps: int) -> StepWeights:
        """The step's weights, for ``steps`` steps (see ``_step_weights``): the first layer's recurrent ones by
        default."""
        first = self.layers[0]
        return StepWeights(first.weight_hh, first.bias_hh, fused_query=False)

    def _features(self, outputs: Tensor, contexts: Optional[Tensor], inputs: Tensor) -> Tensor:
        """The output layer's input, B x T x F, from the steps' outputs, contexts and input embeddings: by default
        ``[s_i; c_i; E y_{i-1}]`` (the paper's eq. 4)."""
        assert contexts is not None
        return torch.cat([self.dropout_module(outputs), contexts, inputs], dim=-1)

    # ------------------------------------------------------------------ fairseq interface

    def forward(
        self,
        prev_output_tokens: Tensor,
        encoder_out: Optional[EncoderOut] = None,
        incremental_state: Optional[IncrementalState] = None,
        features_only: bool = False,
        src_lengths: Optional[Tensor] = None,
    ) -> Tuple[Tensor, Dict[str, List[Optional[Tensor]]]]:
        """Score the next token at every target position.

        Args:
            prev_output_tokens: B x T previous tokens (teacher forcing); in incremental mode only the last column
                is read, and the state of the earlier ones comes from ``incremental_state``.
            encoder_out: the encoder's dict.
            incremental_state: fairseq's per-generation cache, or None for a full forward.
            features_only: return the output layer's input features (B x T x F) instead of logits.
            src_lengths: unused (fairseq's decoders accept it).
        Returns:
            logits B x T x V (or features) and ``{"attn": [B x T x S]}`` (``[None]`` without attention).
        """
        assert encoder_out is not None, "the decoder needs encoder_out"
        if incremental_state is not None:
            prev_output_tokens = prev_output_tokens[:, -1:]
        source = self._source(encoder_out, incremental_state)
        state = self._initial_state(encoder_out, incremental_state)
        emb = self._embed(prev_output_tokens)
        if self.training and self.teacher_forcing_ratio < 1.0 and incremental_state is None:
            run, features, logits = self._run_scheduled(emb, state, source)
            # the loop already applied the output layer, to these very features (one dropout mask)
            return (features if features_only else logits), {"attn": [run.attn]}
        run = self._run(emb, state, source)
        if incremental_state is not None:
            self._save_state(incremental_state, run.state)
        extra: Dict[str, List[Optional[Tensor]]] = {"attn": [run.attn]}
        features = self._features(run.outputs, run.contexts, run.inputs)
        return (features if features_only else self.output_layer(features)), extra

    def extract_features(self, prev_output_tokens, encoder_out=None, incremental_state=None, **kwargs):
        return self.forward(prev_output_tokens, encoder_out, incremental_state, features_only=True)

    def output_layer(self, features: Tensor) -> Tensor:
        """Deep output then vocabulary projection: ... x F -> ... x V."""
        x = features
        if self.deep_output is not None:
            x = self.deep_output(x)
            if self.output_activation == "maxout":  # t_i = [max(t~_{2j-1}, t~_{2j})]_j  (Appendix A.2.2)
                x = x.unflatten(-1, (-1, 2)).amax(dim=-1)
            elif self.output_activation == "tanh":
                x = torch.tanh(x)
            x = self.dropout_module(x)
        return self.output_projection(x)

    def reorder_incremental_state(self, incremental_state: IncrementalState, new_order: Tensor) -> None:
        """Beam search: select and reorder every cached per-sentence tensor along its batch axis.

        The source cache may hold one row per group of hypotheses that share a source sentence (see
        ``_source``); a reorder that keeps the groups together then selects groups, and any other reorder
        expands it to one row per hypothesis."""
        state = self.get_incremental_state(incremental_state, "state")
        if state is None:
            return
        source = self.get_incremental_state(incremental_state, "source")
        if source is not None:
            rows = _cached(source, "values").size(0)
            group = _cached(state, "hidden").size(0) // rows
            owners = block_owners(new_order, group)
            if owners is None:
                owners = new_order // group  # one source row per hypothesis from now on
            if not torch.equal(owners, torch.arange(rows, device=owners.device)):
                self.set_incremental_state(incremental_state, "source", _select(source, owners))
        self.set_incremental_state(incremental_state, "state", _select(state, new_order))

    def max_positions(self) -> int:
        return self.max_target_positions

    # ------------------------------------------------------------------ the incremental cache

    def _source(self, encoder_out: EncoderOut, incremental_state: Optional[IncrementalState]) -> Source:
        """The source side, computed once per sentence (``_new_source``) and, in incremental decoding, cached
        (the fields that are not None) for all later steps."""
        if incremental_state is None:
            return self._new_source(encoder_out, incremental=False)
        cached = self.get_incremental_state(incremental_state, "source")
        if cached is not None:
            return Source(_cached(cached, "values"), cached.get("keys"), cached.get("mask_bias"),
                          cached.get("gates"))
        source = self._new_source(encoder_out, incremental=True)
        cache: Dict[str, Optional[Tensor]] = {"values": source.values}
        if source.keys is not None:
            cache["keys"] = source.keys
        if source.mask_bias is not None:
            cache["mask_bias"] = source.mask_bias
        if source.gates is not None:
            cache["gates"] = source.gates
        self.set_incremental_state(incremental_state, "source", cache)
        return source

    def _initial_state(self, encoder_out: EncoderOut, incremental_state: Optional[IncrementalState]) -> State:
        if incremental_state is not None:
            cached = self.get_incremental_state(incremental_state, "state")
            if cached is not None:
                return State(_cached(cached, "hidden").unbind(1), cached.get("feed"))
        hidden = encoder_out[DECODER_INIT][0]  # B x L x H
        return State(list(hidden.unbind(1)), self._initial_feed(hidden))

    def _save_state(self, incremental_state: IncrementalState, state: State) -> None:
        cache: Dict[str, Optional[Tensor]] = {"hidden": torch.stack(state.hidden, dim=1)}  # B x L x H
        if state.feed is not None:
            cache["feed"] = state.feed
        self.set_incremental_state(incremental_state, "state", cache)

    # ------------------------------------------------------------------ the step loop

    def _step_weights(self, steps: int, source: Source) -> Tuple[StepWeights, Source]:
        """Arrange the step's weights for ``steps`` steps (fusing costs a weight copy: worth it for many steps,
        not for the single step of an incremental call). For several steps under autograd, the weights and the
        attention values (in the returned source) are shared through ``deferred`` tapes; under autocast they are
        cast once here."""
        weights = self._weights(steps)
        # under autocast, cast once here rather than at every step (a no-op otherwise)
        hidden_weight, hidden_bias = precision.cast(weights.hidden_weight), precision.cast(weights.hidden_bias)
        feed_weight = None if weights.feed_weight is None else precision.cast(weights.feed_weight)
        if steps == 1:
            return StepWeights(hidden_weight, hidden_bias, weights.fused_query, feed_weight), source
        hidden_weight, hidden_tape = deferred.share(hidden_weight)
        feed_tape = None
        if feed_weight is not None:
            feed_weight, feed_tape = deferred.share(feed_weight)
        values, values_tape = source.values, None
        if self.attention is not None:  # every step's weighted sum reads the values
            values, values_tape = deferred.share(values)
        weights = StepWeights(hidden_weight, hidden_bias, weights.fused_query, feed_weight, feed_tape, hidden_tape,
                              values_tape)
        return weights, Source(values, source.keys, source.mask_bias, source.gates)

    def _run(self, emb: Tensor, state: State, source: Source) -> Run:
        """The recurrence over the T positions of ``emb`` (B x T x E, the embedded input tokens), every step fed
        its given embedding (teacher forcing, and incremental decoding): the embedding part of the first layer's
        input gates is computed for all steps at once."""
        weights, source = self._step_weights(emb.size(1), source)
        # unbind, not [:, t]: the backward of one indexing per step would zero-fill B x T x 3H each time
        steps: List[Step] = []
        for gates in self.layers[0].embedding_gates(emb).unbind(1):
            steps.append(self._step(gates, weights, state, source))
            state = steps[-1].state
        return collect(steps, emb)

    def _run_scheduled(self, emb: Tensor, state: State, source: Source) -> Tuple[Run, Tensor, Tensor]:
        """``--teacher-forcing-ratio < 1`` in training: at each step after the first, feed the reference token
        (``emb``, B x T x E) with that probability and otherwise the model's own greedy prediction (one coin per
        step for the whole batch, from torch's seeded generator, as in the reference notebook). Each step's input
        is chosen after the step before, so the output layer runs inside the loop. Returns the run, the output
        layer's input features (B x T x F) and the logits (B x T x V) computed from those very features."""
        given = emb.unbind(1)  # not emb[:, t]: see _run
        use_reference = torch.rand(len(given)) < self.teacher_forcing_ratio
        weights, source = self._step_weights(len(given), source)
        step_emb = given[0]
        steps: List[Step] = []
        inputs: List[Tensor] = []
        features: List[Tensor] = []
        logits: List[Tensor] = []
        for t in range(len(given)):
            inputs.append(step_emb)
            step = self._step(self.layers[0].embedding_gates(step_emb), weights, state, source)
            state = step.state
            steps.append(step)
            context = None if step.context is None else step.context.unsqueeze(1)
            features.append(self._features(step.output.unsqueeze(1), context, step_emb.unsqueeze(1)).squeeze(1))
            logits.append(self.output_layer(features[-1]))
            if t + 1 < len(given):
                if use_reference[t + 1]:
                    step_emb = given[t + 1]
                else:
                    step_emb = self._embed(logits[-1].argmax(dim=-1).unsqueeze(1)).squeeze(1)
        run = collect(steps, torch.stack(inputs, dim=1))
        return run, torch.stack(features, dim=1), torch.stack(logits, dim=1)

    def _hidden_gates(self, state: State, weights: StepWeights) -> Tensor:
        """``U s_{t-1} + b_h`` of the first layer (B x 3H; with the fused query B x (3H + A))."""
        return deferred.linear(state.hidden[0], weights.hidden_weight, weights.hidden_bias, weights.hidden_tape)

    def _update(self, input_gates: Tensor, hidden_gates: Tensor, state: State) -> List[Tensor]:
        """``s_t = GRU(x_t, s_{t-1})`` through every layer (dropout between layers), from the first layer's gates."""
        hidden = [self.layers[0].update(input_gates, hidden_gates, state.hidden[0])]
        for layer, previous in zip(self.layers[1:], state.hidden[1:]):
            hidden.append(layer(self.dropout_module(hidden[-1]), previous))
        return hidden

    def _embed(self, tokens: Tensor) -> Tensor:
        """Input embeddings with word dropout and dropout: B x T -> B x T x E."""
        emb = drop_words(self.embed_tokens(tokens), self.word_dropout, self.training)
        return self.dropout_module(emb)

    def _annotations(self, encoder_out: EncoderOut, incremental: bool) -> Tuple[Tensor, Tensor]:
        """The annotations (B x S x C, contiguous) and the padding mask (B x S) for an attention family. In
        incremental decoding beam search's copies of a sentence (consecutive rows) share one row, so that the
        source side is neither computed nor reordered per hypothesis."""
        annotations = encoder_out[ANNOTATIONS][0].transpose(0, 1)
        padding_mask = encoder_out[PADDING_MASK][0]
        copies = row_copies(encoder_out)
        if incremental and copies > 1:  # B*beam x S x C -> B x S x C
            annotations, padding_mask = annotations[::copies], padding_mask[::copies]
        return annotations.contiguous(), padding_mask

    def _attention_source(self, annotations: Tensor, values: Tensor, padding_mask: Tensor) -> Source:
        """An attention family's source side: the attention's keys over the annotations, the values it sums and
        the padding bias, cast once for autocast (not at every step)."""
        assert self.attention is not None
        keys, values = precision.cast(self.attention.precompute(annotations)), precision.cast(values)
        return Source(values, keys, padding_bias(padding_mask, values.dtype))


class AdditiveGRUDecoder(GRUDecoder):
    """Bahdanau et al. (2015): additive attention with the previous state, the context fed to the GRU and to the
    output layer."""

    attention_types = ("additive",)

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

    def _new_source(self, encoder_out: EncoderOut, incremental: bool) -> Source:
        """keys ``U_a h_j`` (B x S x A); values ``[h_j; W_c h_j]`` (B x S x (C + 3H)), ``W_c`` being the context
        part of the first GRU layer's input weights: since ``W_c c_i = sum_j alpha_ij W_c h_j``, one weighted sum
        per step then gives both the context ``c_i`` and its contribution to the GRU's input gates, instead of a
        C x 3H matrix multiply per step."""
        annotations, padding_mask = self._annotations(encoder_out, incremental)
        values = torch.cat([annotations, self.layers[0].feed_gates(annotations)], dim=2)
        return self._attention_source(annotations, values, padding_mask)

    def _weights(self, steps: int) -> StepWeights:
        first = self.layers[0]
        if self.num_layers > 1 or steps == 1:  # the query reads the top layer / a single step: not worth a copy
            return StepWeights(first.weight_hh, first.bias_hh, fused_query=False)
        query_weight = self.attention.query_weight()  # W_a, A x H
        return StepWeights(torch.cat([first.weight_hh, query_weight], dim=0),
                           torch.cat([first.bias_hh, first.bias_hh.new_zeros(query_weight.size(0))]),
                           fused_query=True)

    def _step(self, emb_gates: Tensor, weights: StepWeights, state: State, source: Source) -> Step:
        keys, mask_bias = source.keys, source.mask_bias
        assert keys is not None and mask_bias is not None
        hidden_gates = self._hidden_gates(state, weights)
        # c_i from s_{i-1} (eqs. 5-7); the values are [h_j; W_c h_j], so the weighted sum is [c_i; W_c c_i]
        if weights.fused_query:  # W_a s_{i-1} came with U s_{i-1}
            gates = 3 * self.hidden_size
            hidden_gates, query = hidden_gates.split([gates, hidden_gates.size(1) - gates], dim=1)
            extended, attn = self.attention.attend(query, keys, source.values, mask_bias, weights.values_tape)
        else:
            extended, attn = self.attention(state.hidden[-1], keys, source.values, mask_bias, weights.values_tape)
        context, context_gates = extended.split([self.encoder_output_dim, 3 * self.hidden_size], dim=1)
        hidden = self._update(emb_gates + context_gates, hidden_gates, state)  # s_i = GRU([E y_{i-1}; c_i], s_{i-1})
        return Step(State(hidden, None), output=hidden[-1], context=context, attn=attn)


class LuongGRUDecoder(GRUDecoder):
    """Luong et al. (2015): dot or general attention with the new state, and input feeding of the attentional
    state ``~s_t``, which is also what the output layer reads."""

    attention_types = ("dot", "general")

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

    def _new_source(self, encoder_out: EncoderOut, incremental: bool) -> Source:
        """keys ``W_a h_j`` (general) or ``h_j`` (dot), B x S x Q; values: the annotations, B x S x C."""
        annotations, padding_mask = self._annotations(encoder_out, incremental)
        return self._attention_source(annotations, annotations, padding_mask)

    def _initial_feed(self, hidden: Tensor) -> Optional[Tensor]:
        return hidden.new_zeros(hidden.size(0), self.hidden_size)

    def _weights(self, steps: int) -> StepWeights:
        first = self.layers[0]
        return StepWeights(first.weight_hh, first.bias_hh, fused_query=False, feed_weight=first.feed_weight)

    def _step(self, emb_gates: Tensor, weights: StepWeights, state: State, source: Source) -> Step:
        feed, feed_weight = state.feed, weights.feed_weight
        keys, mask_bias = source.keys, source.mask_bias
        assert feed is not None and feed_weight is not None and keys is not None and mask_bias is not None
        input_gates = emb_gates + deferred.linear(feed, feed_weight, None, weights.feed_tape)
        hidden = self._update(input_gates, self._hidden_gates(state, weights), state)  # s_t
        context, attn = self.attention(hidden[-1], keys, source.values, mask_bias, weights.values_tape)
        attentional = self.attention.attentional_state(context, hidden[-1])  # ~s_t = tanh(W_c [c_t; s_t] + b_c)
        return Step(State(hidden, attentional), output=attentional, context=None, attn=attn)

    def _features(self, outputs: Tensor, contexts: Optional[Tensor], inputs: Tensor) -> Tensor:
        return self.dropout_module(outputs)


class FixedContextGRUDecoder(GRUDecoder):
    """The RNN encoder-decoder of Cho et al. (2014), the paper's RNNencdec baseline, as a controlled ablation of the
    additive model: no attention; the context is the same vector at every step, ``c = [h->_Tx; h<-_1]`` (the top
    encoder layer's final states, from which the initial state is computed too), fed to the GRU with
    ``E y_{i-1}`` and read by the output layer with ``s_i`` and ``E y_{i-1}``. Its share of the GRU's input gates,
    ``W_c c``, is computed once per sentence, so a step costs no more than the GRU itself."""

    attention_types = ("none",)

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

    def _new_source(self, encoder_out: EncoderOut, incremental: bool) -> Source:
        """values: ``c`` (B x C); gates: ``W_c c`` (B x 3H). One row per hypothesis in beam search (the rows are
        3H + C wide, so reordering them costs less than grouping them would)."""
        context = encoder_out[SUMMARY][0]
        gates = self.layers[0].feed_gates(context)
        return Source(precision.cast(context), gates=precision.cast(gates))

    def _step(self, emb_gates: Tensor, weights: StepWeights, state: State, source: Source) -> Step:
        gates = source.gates
        assert gates is not None
        hidden = self._update(emb_gates + gates, self._hidden_gates(state, weights), state)  # s_i
        return Step(State(hidden, None), output=hidden[-1], context=source.values, attn=None)


def collect(steps: List[Step], inputs: Tensor) -> Run:
    """The run made of ``steps`` (T of them, in order) fed ``inputs`` (B x T x E)."""
    contexts: List[Tensor] = []
    attns: List[Tensor] = []
    for step in steps:
        context, attn = step.context, step.attn
        if context is not None:
            contexts.append(context)
        if attn is not None:
            attns.append(attn)
    return Run(
        outputs=torch.stack([step.output for step in steps], dim=1),
        contexts=torch.stack(contexts, dim=1) if len(contexts) > 0 else None,
        attn=torch.stack(attns, dim=1) if len(attns) > 0 else None,
        state=steps[-1].state,
        inputs=inputs,
    )


#: The decoder class of each --attention-type.
DECODERS = {kind: cls for cls in (AdditiveGRUDecoder, LuongGRUDecoder, FixedContextGRUDecoder)
            for kind in cls.attention_types}


def projection_input_dim(attention_type: str, hidden_size: int, encoder_output_dim: int, embed_dim: int,
                         out_embed_dim: int) -> int:
    """Size of what the vocabulary projection reads: the deep output layer's ``--decoder-out-embed-dim`` where there
    is one, otherwise the family's output-layer input (``features_dim``). Tying the projection to an embedding
    needs this to equal the embedding's size."""
    return _projection_dim(out_embed_dim, DECODERS[attention_type].features_dim(hidden_size, encoder_output_dim,
                                                                                 embed_dim))


def build_decoder(attention_type: str, *args, **kwargs) -> GRUDecoder:
    """The decoder for ``--attention-type attention_type``."""
    return DECODERS[attention_type](*args, attention_type=attention_type, **kwargs)
