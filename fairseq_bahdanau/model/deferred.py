"""Deferred gradients for tensors that every decoder step reads.

In the teacher-forced forward every step ``t`` reads the same tensors: the attention values ``V`` (B x S x D,
``[h_j; W_c h_j]`` for additive attention) through the weighted sum ``c_t = a_t V``, and the recurrent weight ``W``
(``W_hh`` stacked with the attention's ``W_a``) through ``W s_{t-1}``. Plain autograd turns every step's share of
their gradient into its own product and adds it to an accumulator: for the values that is a fresh B x S x D outer
product per step (about 25 MB at Multi30k sizes) and as many additions. Here each step only records, during
backward, the two small factors of its share, and the gradient is formed once, after backward has gone through
every step, as one (batched) matrix product over all steps:

    dL/dV = sum_t a_t^T g_t = A^T G      (A: B x T x S attention weights, G: B x T x D gradients of c_t)
    dL/dW = sum_t g_t^T s_{t-1} = G^T S  (G: T*B x 3H gate gradients, S: T*B x H previous states)

Autograd itself orders this: ``share`` puts a gathering node between the tensor and all of its per-step readers,
and the engine runs a node only after every node that uses its output. The record (a ``Tape``) is made fresh by
each forward call and emptied by the gathering node, so no state is kept on modules and a second backward
(``retain_graph``) is exact too. Outside autograd (``torch.no_grad``, generation) and under mixed precision
(``torch.autocast``, fairseq's ``--amp``), whose casts these hand-written backwards do not repeat, the plain
operations run.
"""

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import Function


class Tape:
    """The per-step factors ``(left_t, right_t)`` of a shared tensor's gradient ``sum_t left_t^T right_t``."""

    left: List[Tensor]
    right: List[Tensor]

    def __init__(self) -> None:
        self.left = []
        self.right = []

    def total(self) -> Optional[Tensor]:
        """``sum_t left_t^T right_t`` in one product (batched over the first axis for 3-D factors), then empty."""
        if not self.left:
            return None
        if self.left[0].dim() == 3:  # B x G x S and B x G x D per step -> B x S x D
            total = torch.bmm(torch.cat(self.left, 1).transpose(1, 2), torch.cat(self.right, 1))
        else:  # N x out and N x in per step -> out x in
            total = torch.cat(self.left, 0).t().mm(torch.cat(self.right, 0))
        self.left.clear()
        self.right.clear()
        return total


class _Gather(Function):
    """Identity forward; backward adds the tape's deferred total to whatever else reached the tensor."""

    @staticmethod
    def forward(ctx, tensor: Tensor, tape: Tape) -> Tensor:
        ctx.tape = tape
        ctx.set_materialize_grads(False)
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad: Optional[Tensor]):
        total = ctx.tape.total()
        if total is None:
            return grad, None
        return (total if grad is None else total + grad), None


def _record(ctx, left: Tensor, right: Tensor) -> None:
    """Put a step's factors on the tape, unless this backward pass will not run the gathering node (a backward
    asked only for other inputs' gradients), so that no stale factors reach a later pass."""
    if _will_execute is None or _will_execute(ctx.gather_node):
        ctx.tape.left.append(left)
        ctx.tape.right.append(right)


_will_execute = getattr(torch._C, "_will_engine_execute_node", None)


class _WeightedSum(Function):
    """``bmm(weights, values)`` whose gradient for ``values`` goes to the tape."""

    @staticmethod
    def forward(ctx, weights: Tensor, values: Tensor, tape: Tape) -> Tensor:
        ctx.save_for_backward(weights, values)
        ctx.tape = tape
        ctx.gather_node = values.grad_fn
        return torch.bmm(weights, values)

    @staticmethod
    def backward(ctx, grad: Tensor):
        weights, values = ctx.saved_tensors
        _record(ctx, weights, grad)
        grad_weights = torch.bmm(grad, values.transpose(1, 2)) if ctx.needs_input_grad[0] else None
        return grad_weights, None, None


class _Linear(Function):
    """``F.linear(x, weight, bias)`` whose gradient for ``weight`` goes to the tape."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Optional[Tensor], tape: Tape) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.tape = tape
        ctx.gather_node = weight.grad_fn
        ctx.has_bias = bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        _record(ctx, grad, x)
        grad_x = grad.mm(weight) if ctx.needs_input_grad[0] else None
        grad_bias = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, None, grad_bias, None


def autocast_enabled() -> bool:
    """Whether ``torch.autocast`` is on for any device."""
    any_enabled = getattr(torch._C, "_is_any_autocast_enabled", None)
    if any_enabled is not None:
        return bool(any_enabled())
    return torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled()  # older torch: CUDA and CPU


def recording() -> bool:
    """Whether the hand-written backwards apply: autograd is recording and autocast is off."""
    return torch.is_grad_enabled() and not autocast_enabled()


def share(tensor: Tensor) -> Tuple[Tensor, Optional[Tape]]:
    """Prepare ``tensor`` to be read at every step: returns the tensor to read and its tape (None when no
    gradient is being recorded or autocast is on, and then the plain operations run)."""
    if not (recording() and tensor.requires_grad):
        return tensor, None
    tape = Tape()
    return _Gather.apply(tensor, tape), tape


def weighted_sum(weights: Tensor, values: Tensor, tape: Optional[Tape]) -> Tensor:
    """``bmm(weights, values)``: B x G x S, B x S x D -> B x G x D, with ``values`` from ``share``."""
    if tape is None:
        return torch.bmm(weights, values)
    return _WeightedSum.apply(weights, values, tape)


def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor], tape: Optional[Tape]) -> Tensor:
    """``F.linear(x, weight, bias)``: N x in -> N x out, with ``weight`` from ``share``."""
    if tape is None:
        return F.linear(x, weight, bias)
    return _Linear.apply(x, weight, bias, tape)
