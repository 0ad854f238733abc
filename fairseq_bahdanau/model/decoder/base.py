"""What every decoder family shares: ``GRUDecoder`` (embeddings, GRU layers, output layer, the step loop, the
incremental cache and its reordering) and the records the loop passes around.

A family (a subclass, one module each) defines:

* ``Source``: a NamedTuple of what depends only on the source sentence, made by ``_new_source`` once per sentence
  and, in incremental decoding, cached and reordered field by field (every field has one row per sentence or per
  hypothesis);
* ``State``: a NamedTuple of what it carries from one step to the next, first field ``hidden`` (one B x H tensor
  per layer), made for the first step by ``_first_state``; this module's ``State`` unless it carries more;
* ``_reads(source, steps)``: what every step of a run reads (the source and the weights), arranged once per run;
* ``_step(emb, emb_gates, state, reads)``: one step, from the previous state to the output layer's input.
"""

from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import torch
from fairseq.models import FairseqIncrementalDecoder
from torch import Tensor, nn

from .. import deferred, precision
from ..dropout import Dropout, drop_words
from ..encoder import build_embedding
from ..encoder_out import DECODER_INIT, EncoderOut, block_owners
from ..gru import FedGRUCell, NormGRUCell

IncrementalState = Dict[str, Dict[str, Optional[Tensor]]]
Cache = Dict[str, Optional[Tensor]]


def projection_dim(out_embed_dim: int, features_dim: int) -> int:
    """What the vocabulary projection reads: the deep output (``out_embed_dim``, 0 for none) or the features."""
    return out_embed_dim if out_embed_dim > 0 else features_dim


class Shared(NamedTuple):
    """A tensor every step of a run reads (cast once under autocast), and the tape that collects the per-step
    factors of its gradient (``deferred``): None for a single step, without autograd, or under autocast."""

    tensor: Tensor
    tape: Optional[deferred.Tape] = None


class State(NamedTuple):
    """The recurrent state between steps (the families without input feeding)."""

    hidden: List[Tensor]  # one B x H tensor per layer


class Step(NamedTuple):
    """One step's results."""

    state: Any  # the family's State after the step
    features: Tensor  # B x F: what the output layer reads
    attn: Optional[Tensor]  # B x S; None without attention


class Run(NamedTuple):
    """A run of T steps."""

    features: Tensor  # B x T x F
    attn: Optional[Tensor]  # B x T x S; None without attention
    state: Any  # the family's State after the last step


def share(tensor: Tensor, steps: int) -> Shared:
    """``tensor`` for every step of a run of ``steps``: cast once under autocast, and for a run of several steps
    under autograd shared through a ``deferred`` tape (one gradient product for all steps)."""
    tensor = precision.cast(tensor)
    return Shared(tensor) if steps == 1 else Shared(*deferred.share(tensor))


def recurrent_gates(hidden: Tensor, weight: Shared, bias: Tensor) -> Tensor:
    """``U s_{t-1} + b_h`` of the first layer, hidden B x H -> B x 3H (with a fused query, more)."""
    return deferred.linear(hidden, weight.tensor, bias, weight.tape)


def collect(steps: List[Step]) -> Run:
    """The run made of ``steps`` (T of them, in order)."""
    attn = [step.attn for step in steps if step.attn is not None]
    return Run(torch.stack([step.features for step in steps], dim=1),
               torch.stack(attn, dim=1) if len(attn) > 0 else None, steps[-1].state)


class Family:
    """What a decoder family defines, and ``GRUDecoder`` calls (see the module docstring)."""

    Source: Any = None  # the family's NamedTuple of what it computes once per sentence
    State: Any = State  # the family's NamedTuple of what it carries between steps, first field ``hidden``

    def _new_source(self, encoder_out: EncoderOut, incremental: bool) -> Any:
        """The ``Source`` of a new batch; ``incremental``: for incremental decoding, where beam search's copies of
        a sentence (consecutive rows) may share one row."""
        raise NotImplementedError

    def _first_state(self, hidden: List[Tensor]) -> Any:
        """The ``State`` before the first step, from the initial hidden states (one B x H per layer)."""
        return self.State(hidden)

    def _reads(self, source: Any, steps: int) -> Any:
        """What every step of a run of ``steps`` reads, arranged once per run (``share``)."""
        raise NotImplementedError

    def _step(self, emb: Tensor, emb_gates: Tensor, state: Any, reads: Any) -> Step:
        """One step: emb B x E (the input embedding), emb_gates B x 3H (its part of the first layer's input gates,
        with their bias), the previous state -> the new state, the output layer's input and the attention."""
        raise NotImplementedError


class GRUDecoder(Family, FairseqIncrementalDecoder):
    """GRU decoder with a deep output layer and incremental decoding: the step loop, the incremental cache and its
    reordering, shared by every family (a subclass, which defines what ``Family`` lists)."""

    def __init__(self, dictionary, embed_dim: int, hidden_size: int, num_layers: int, encoder_output_dim: int,
                 attention_type: str, build_attention: Callable[[], Optional[nn.Module]], feed_dim: int,
                 features_dim: int, out_embed_dim: int = 0, output_activation: str = "linear", dropout: float = 0.5,
                 share_input_output_embed: bool = False, teacher_forcing_ratio: float = 1.0,
                 max_positions: int = 1024, word_dropout: float = 0.0, layer_norm: bool = False) -> None:
        """``build_attention`` makes the family's attention module (or None), called after the embeddings are
        made (so that parameters are made, and drawn from the seeded generator, in the same order for every
        family); ``feed_dim``: the size of what the first GRU layer reads beside the embedding; ``features_dim``:
        the size of the output layer's input (before the deep output)."""
        super().__init__(dictionary)
        self.attention_type = attention_type
        self.dropout_module = Dropout(dropout, module_name=type(self).__name__)
        self.word_dropout = word_dropout
        self.embed_dim, self.hidden_size, self.num_layers = embed_dim, hidden_size, num_layers
        self.encoder_output_dim = encoder_output_dim
        self.teacher_forcing_ratio = teacher_forcing_ratio
        self.max_target_positions = max_positions
        self.output_activation = output_activation

        self.embed_tokens = build_embedding(dictionary, embed_dim)
        self.attention = build_attention()
        upper = NormGRUCell if layer_norm else nn.GRUCell
        self.layers = nn.ModuleList([FedGRUCell(embed_dim, feed_dim, hidden_size, layer_norm)]
                                    + [upper(hidden_size, hidden_size) for _ in range(num_layers - 1)])
        self.deep_output: Optional[nn.Linear] = None
        if out_embed_dim > 0:
            width = 2 * out_embed_dim if output_activation == "maxout" else out_embed_dim
            self.deep_output = nn.Linear(features_dim, width)
        width = projection_dim(out_embed_dim, features_dim)
        self.output_projection = nn.Linear(width, len(dictionary))
        if share_input_output_embed:  # bahdanau_gru.check_tying has checked the sizes, naming the flags
            assert width == embed_dim, (width, embed_dim)
            self.output_projection.weight = self.embed_tokens.weight

    # ------------------------------------------------------------------ fairseq interface

    def forward(self, prev_output_tokens: Tensor, encoder_out: Optional[EncoderOut] = None,
                incremental_state: Optional[IncrementalState] = None, features_only: bool = False,
                src_lengths: Optional[Tensor] = None) -> Tuple[Tensor, Dict[str, List[Optional[Tensor]]]]:
        """Score the next token at every target position: prev_output_tokens B x T (in incremental mode only the
        last column is read; the earlier ones' state is in ``incremental_state``), ``encoder_out`` the encoder's
        dict -> logits B x T x V (or, with ``features_only``, the output layer's input B x T x F) and
        ``{"attn": [B x T x S]}`` (``[None]`` without attention). ``src_lengths`` is unused."""
        assert encoder_out is not None, "the decoder needs encoder_out"
        if incremental_state is not None:
            prev_output_tokens = prev_output_tokens[:, -1:]
        source = self._source(encoder_out, incremental_state)
        state = self._initial_state(encoder_out, incremental_state)
        emb = self._embed(prev_output_tokens)
        if self.training and self.teacher_forcing_ratio < 1.0 and incremental_state is None:
            run, logits = self._run_scheduled(emb, state, source)
        else:
            run, logits = self._run(emb, state, source), None
        if incremental_state is not None:
            self._save_state(incremental_state, run.state)
        if not features_only and logits is None:
            logits = self.output_layer(run.features)
        return (run.features if features_only else logits), {"attn": [run.attn]}

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
        """Beam search: select and reorder every cached per-sentence tensor along its batch axis. The source cache
        may hold one row per group of hypotheses that share a sentence; a reorder that keeps the groups together
        then selects groups, and any other expands it to one row per hypothesis."""
        state = self.get_incremental_state(incremental_state, "state")
        if state is None:
            return
        source = self.get_incremental_state(incremental_state, "source")
        if source is not None:
            rows = _cached(source, self.Source._fields[0]).size(0)
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

    def _source(self, encoder_out: EncoderOut, incremental_state: Optional[IncrementalState]) -> Any:
        """The family's source side, computed once per sentence and, in incremental decoding, cached."""
        if incremental_state is None:
            return self._new_source(encoder_out, incremental=False)
        cached = self.get_incremental_state(incremental_state, "source")
        if cached is not None:
            return self.Source(*[_cached(cached, name) for name in self.Source._fields])
        source = self._new_source(encoder_out, incremental=True)
        self.set_incremental_state(incremental_state, "source", dict(source._asdict()))
        return source

    def _initial_state(self, encoder_out: EncoderOut, incremental_state: Optional[IncrementalState]) -> Any:
        """The state before the first step, or the cached one after the last (``hidden`` cached as B x L x H)."""
        cached = None if incremental_state is None else self.get_incremental_state(incremental_state, "state")
        if cached is not None:
            fields = {name: _cached(cached, name) for name in self.State._fields}
            return self.State(**dict(fields, hidden=list(fields["hidden"].unbind(1))))
        return self._first_state(list(encoder_out[DECODER_INIT][0].unbind(1)))  # B x L x H

    def _save_state(self, incremental_state: IncrementalState, state: Any) -> None:
        cache: Cache = dict(state._asdict(), hidden=torch.stack(state.hidden, dim=1))
        self.set_incremental_state(incremental_state, "state", cache)

    # ------------------------------------------------------------------ the step loop

    def _run(self, emb: Tensor, state: Any, source: Any) -> Run:
        """The recurrence over the T positions of ``emb`` (B x T x E, the embedded input tokens), each step fed
        its given embedding (teacher forcing, and incremental decoding): the embedding part of the first layer's
        input gates is computed for all steps at once."""
        reads = self._reads(source, emb.size(1))
        # unbind, not [:, t]: the backward of one indexing per step would zero-fill B x T x 3H each time
        steps: List[Step] = []
        for step_emb, gates in zip(emb.unbind(1), self.layers[0].embedding_gates(emb).unbind(1)):
            steps.append(self._step(step_emb, gates, state, reads))
            state = steps[-1].state
        return collect(steps)

    def _run_scheduled(self, emb: Tensor, state: Any, source: Any) -> Tuple[Run, Tensor]:
        """``--teacher-forcing-ratio < 1`` in training: at each step after the first, feed the reference token
        (``emb``, B x T x E) with that probability and otherwise the model's own greedy prediction (one coin per
        step for the whole batch, from torch's seeded generator, as in the reference notebook). Each step's input
        is chosen after the step before, so the output layer runs inside the loop. Returns the run and its
        logits (B x T x V)."""
        given = emb.unbind(1)  # not emb[:, t]: see _run
        use_reference = torch.rand(len(given)) < self.teacher_forcing_ratio
        reads = self._reads(source, len(given))
        step_emb = given[0]
        steps: List[Step] = []
        logits: List[Tensor] = []
        for t in range(len(given)):
            steps.append(self._step(step_emb, self.layers[0].embedding_gates(step_emb), state, reads))
            state = steps[-1].state
            logits.append(self.output_layer(steps[-1].features))
            if t + 1 < len(given):
                feed_reference = bool(use_reference[t + 1])
                step_emb = given[t + 1] if feed_reference else self._embed(logits[-1].argmax(dim=-1)[:, None])[:, 0]
        return collect(steps), torch.stack(logits, dim=1)

    # ------------------------------------------------------------------ what the families' steps call

    def _update(self, input_gates: Tensor, hidden_gates: Tensor, hidden: List[Tensor]) -> List[Tensor]:
        """``s_t = GRU(x_t, s_{t-1})`` through every layer (dropout between layers), from the first layer's gates."""
        new = [self.layers[0].update(input_gates, hidden_gates, hidden[0])]
        for layer, previous in zip(self.layers[1:], hidden[1:]):
            new.append(layer(self.dropout_module(new[-1]), previous))
        return new

    def _embed(self, tokens: Tensor) -> Tensor:
        """Input embeddings with word dropout and dropout: B x T -> B x T x E."""
        return self.dropout_module(drop_words(self.embed_tokens(tokens), self.word_dropout, self.training))


def _select(cache: Cache, order: Tensor) -> Cache:
    """Every cached tensor's rows in ``order``."""
    return {key: None if value is None else value.index_select(0, order) for key, value in cache.items()}


def _cached(cache: Cache, key: str) -> Tensor:
    """A tensor the incremental cache must hold."""
    value = cache[key]
    assert value is not None, key
    return value
