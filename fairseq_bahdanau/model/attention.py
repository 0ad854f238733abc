"""Attention over the encoder annotations ``h_j``.

Two families, one interface. Every module splits its work in two:

* ``precompute(values) -> keys``: whatever depends only on the source sentence, done once per sentence
  (``U h_j`` for additive attention, ``W_a h_j`` for general attention) and cached by the decoder;
* ``forward(query, keys, values, mask_bias) -> (context, weights)``: the per-step part (``AdditiveAttention.attend``
  does it from a query the decoder has already projected, with its GRU's hidden gates).

Shapes: ``B`` batch, ``S`` source length, ``C`` annotation size (2 x encoder hidden), ``A`` attention size,
``Q`` query size (decoder hidden). The source-side tensors (keys, values, mask) may hold one row per *group* of
``G`` consecutive queries that share a source sentence (beam search: ``G`` = beam size, so the source side is
neither copied nor reordered per hypothesis); queries then come as ``B*G`` rows, and ``G = 1`` is the plain case.
``mask_bias`` (B x S) is 0 at real positions and -inf at padding (see ``padding_bias``), so padded source
positions get exactly zero weight.
"""

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import deferred


def padding_bias(padding_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """B x S bias, 0 at real positions and -inf at padding (True in ``padding_mask``); made once per sentence."""
    return torch.zeros(padding_mask.shape, dtype=dtype, device=padding_mask.device).masked_fill(
        padding_mask, float("-inf")
    )


def masked_softmax(scores: Tensor, mask_bias: Tensor) -> Tensor:
    """Softmax over the source axis with padded positions set to exactly zero.

    Args:
        scores: B x S energies.
        mask_bias: B x S, 0 at real positions and -inf at padding.
    Returns:
        B x S weights that sum to 1 over the real positions.
    """
    return F.softmax((scores + mask_bias).float(), dim=-1).type_as(scores)


def weigh(
    scores: Tensor, values: Tensor, mask_bias: Tensor, values_tape: Optional[deferred.Tape]
) -> Tuple[Tensor, Tensor]:
    """The step's common tail: scores B x G x S -> context B*G x C (weighted sum of values B x S x C) and weights
    B*G x S."""
    weights = masked_softmax(scores, mask_bias.unsqueeze(1))
    context = deferred.weighted_sum(weights, values, values_tape)  # B x G x C
    return context.flatten(0, 1), weights.flatten(0, 1)


class _AdditiveEnergies(torch.autograd.Function):
    """``e = tanh(keys + query) v`` (eq. 6) that keeps only its inputs for backward and recomputes the tanh there.

    Autograd would keep the B x G x S x A tanh of every step alive until backward (about 5 MB per step at Multi30k
    sizes, the largest per-step activation of the model); the keys are shared by all steps and the query is
    B x G x A, so recomputing costs one add and one tanh per step and saves that memory. (Not used under
    autocast, whose casts this backward does not repeat.)
    """

    @staticmethod
    def forward(ctx, keys: Tensor, query: Tensor, v: Tensor) -> Tensor:
        ctx.save_for_backward(keys, query, v)
        return torch.tanh(keys.unsqueeze(1) + query.unsqueeze(2)).matmul(v)

    @staticmethod
    def backward(ctx, grad: Tensor):
        keys, query, v = ctx.saved_tensors
        hidden = torch.tanh_(keys.unsqueeze(1) + query.unsqueeze(2))  # B x G x S x A, recomputed
        grad_v = grad.reshape(1, -1).mm(hidden.reshape(-1, hidden.size(-1))).view_as(v)
        grad_pre = torch.ops.aten.tanh_backward(grad.unsqueeze(-1) * v, hidden)
        grad_keys = grad_pre.squeeze(1) if grad_pre.size(1) == 1 else grad_pre.sum(1)
        return grad_keys, grad_pre.sum(2), grad_v


def additive_energies(keys: Tensor, query: Tensor, v: Tensor) -> Tensor:
    """``e = tanh(keys + query) v`` (eq. 6): keys B x S x A, query B x G x A, v A -> B x G x S; under autograd
    through ``_AdditiveEnergies``, which saves the memory of the tanh."""
    if deferred.recording():
        return _AdditiveEnergies.apply(keys, query, v)
    return torch.tanh(keys.unsqueeze(1) + query.unsqueeze(2)).matmul(v)


class AdditiveAttention(nn.Module):
    """Bahdanau et al. (2015), Section 3.1 and Appendix A.1.2.

    ``e_ij = v_a^T tanh(W_a s_{i-1} + U_a h_j)`` (eq. 6), ``alpha_ij = softmax_j(e_ij)`` (eq. 7),
    ``c_i = sum_j alpha_ij h_j`` (eq. 5). The query is the decoder state *before* the step.
    """

    def __init__(self, query_dim: int, value_dim: int, attention_dim: int) -> None:
        super().__init__()
        self.attention_dim = attention_dim
        self.query_proj = nn.Linear(query_dim, attention_dim, bias=False)  # W_a
        self.key_proj = nn.Linear(value_dim, attention_dim, bias=True)  # U_a (and the MLP's bias)
        self.v = nn.Parameter(torch.empty(attention_dim))  # v_a
        nn.init.uniform_(self.v, -0.1, 0.1)

    def query_weight(self) -> Tensor:
        """``W_a`` (A x Q), for a caller that projects the query itself, fused with another matrix multiply of
        the same input (the decoder's GRU hidden gates), and then calls ``attend``."""
        return self.query_proj.weight

    def precompute(self, values: Tensor) -> Tensor:
        """``U_a h_j`` for every source position, once per sentence: B x S x C -> B x S x A."""
        return self.key_proj(values)

    def attend(
        self,
        projected_query: Tensor,
        keys: Tensor,
        values: Tensor,
        mask_bias: Tensor,
        values_tape: Optional[deferred.Tape] = None,
    ) -> Tuple[Tensor, Tensor]:
        """The step from an already projected query ``W_a s_{i-1}`` (B*G x A): the decoder computes it in the
        same matrix multiply as the GRU's hidden gates. keys B x S x A, values B x S x C, mask_bias B x S ->
        context B*G x C, weights B*G x S. ``values_tape``: from ``deferred.share(values)`` in a teacher-forced
        forward, so that the values' gradient is formed once for all steps."""
        groups = keys.size(0)
        query = projected_query.view(groups, -1, projected_query.size(1))  # B x G x A
        return weigh(additive_energies(keys, query, self.v), values, mask_bias, values_tape)

    def forward(
        self,
        query: Tensor,
        keys: Tensor,
        values: Tensor,
        mask_bias: Tensor,
        values_tape: Optional[deferred.Tape] = None,
    ) -> Tuple[Tensor, Tensor]:
        """query B*G x Q, keys B x S x A, values B x S x C -> context B*G x C, weights B*G x S."""
        return self.attend(self.query_proj(query), keys, values, mask_bias, values_tape)


class LuongAttention(nn.Module):
    """Luong, Pham & Manning (2015), Section 3: ``dot`` and ``general`` scores with the attentional state.

    ``score(s_t, h_j) = s_t^T h_j`` (dot) or ``s_t^T W_a h_j`` (general), ``c_t = sum_j a_tj h_j``, and the
    attentional state ``~s_t = tanh(W_c [c_t; s_t] + b_c)`` (eq. 5) that feeds the output layer and, through input
    feeding, the next step. The query is the decoder state *after* the step.
    """

    def __init__(self, query_dim: int, value_dim: int, kind: str) -> None:
        super().__init__()
        if kind not in ("dot", "general"):
            raise ValueError(f"unknown Luong attention {kind!r}")
        if kind == "dot" and query_dim != value_dim:
            raise ValueError(f"dot attention needs equal query and value sizes, got {query_dim} and {value_dim}")
        self.kind = kind
        self.key_proj = nn.Linear(value_dim, query_dim, bias=False) if kind == "general" else None  # W_a
        self.combine = nn.Linear(value_dim + query_dim, query_dim, bias=True)  # W_c, b_c

    def precompute(self, values: Tensor) -> Tensor:
        """``W_a h_j`` (general) or ``h_j`` itself (dot), once per sentence: B x S x C -> B x S x Q."""
        return values if self.key_proj is None else self.key_proj(values)

    def forward(
        self,
        query: Tensor,
        keys: Tensor,
        values: Tensor,
        mask_bias: Tensor,
        values_tape: Optional[deferred.Tape] = None,
    ) -> Tuple[Tensor, Tensor]:
        """query B*G x Q, keys B x S x Q, values B x S x C -> context B*G x C, weights B*G x S."""
        scores = torch.bmm(query.view(keys.size(0), -1, query.size(1)), keys.transpose(1, 2))  # B x G x S
        return weigh(scores, values, mask_bias, values_tape)

    def attentional_state(self, context: Tensor, query: Tensor) -> Tensor:
        """``~s_t = tanh(W_c [c_t; s_t] + b_c)``: B x C, B x Q -> B x Q."""
        return torch.tanh(self.combine(torch.cat([context, query], dim=1)))
