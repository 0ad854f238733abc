"""GRU pieces: the update from precomputed gates, layer normalisation of the gates, and the decoder's cells.

The decoder never calls its first cell as a whole: the embedding part of its input gates does not depend on the
previous step and is computed for all steps in one matrix multiply (``embedding_gates``); the fed part (the
context ``c_i``, or Luong's ``~s_{t-1}``) and the hidden gates come per step; ``FedGRUCell.update`` combines them
with ``torch.nn.GRUCell``'s equations (``gru_update``). PyTorch applies the reset gate after the recurrent matrix,
``r * (U_n h + b_n)``; the paper's Appendix A.2.2 applies it before, ``U (r * s)``: this model follows PyTorch.

``--layer-norm`` (Ba et al. 2016, "Layer Normalization", Section 3.1 for RNNs; as Nematus normalises its GRUs)
normalises the input pre-activations ``W x + b`` and the recurrent ones ``U h + b`` separately, each in two blocks
with their own gain and bias: the reset and update gates' 2H together and the candidate's H
(``GateNorm``)::

    [r; z] = sigmoid(LN_x([W_r; W_z] x + b) + LN_h([U_r; U_z] h + b))
    n      = tanh(LN_x'(W_n x + b) + r * LN_h'(U_n h + b))
    h'     = (1 - z) * n + z * h
"""

from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, _VF, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence


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


class GateNorm(nn.Module):
    """Layer normalisation of one side's gate pre-activations (... x 3H): the reset and update gates' 2H together,
    the candidate's H apart, each with its own gain (initially 1) and bias (initially 0)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.gates = nn.LayerNorm(2 * hidden_size)
        self.candidate = nn.LayerNorm(hidden_size)

    def forward(self, pre: Tensor) -> Tensor:
        gates, candidate = pre.split([2 * self.hidden_size, self.hidden_size], dim=-1)
        return torch.cat([self.gates(gates), self.candidate(candidate)], dim=-1)


class GRUNorms(nn.Module):
    """The two ``GateNorm``s of one layer-normalised GRU (one direction of one layer)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.input = GateNorm(hidden_size)
        self.hidden = GateNorm(hidden_size)

    def update(self, input_gates: Tensor, hidden_gates: Tensor, hidden: Tensor) -> Tensor:
        """``gru_update`` with both sides normalised."""
        return gru_update(self.input(input_gates), self.hidden(hidden_gates), hidden)


def gather_time(x: Tensor, index: Tensor) -> Tensor:
    """``out[t, b] = x[index[t, b], b]``. x: S x B x C, index: S x B (long)."""
    return x.gather(0, index.unsqueeze(2).expand_as(x))


def norm_gru(x: Tensor, lengths: Tensor, flat: List[Tensor], norms: Sequence[GRUNorms],
             dropout: Callable[[Tensor], Tensor]) -> Tuple[Tensor, Tensor]:
    """A bidirectional GRU with layer-normalised gates (``--layer-norm``) over a right-padded batch, exact for
    every sentence and zero at padding, which PyTorch's GRU kernels cannot do: each direction's normalised input
    gates for all steps in one matrix multiply and one normalisation, the recurrence in a loop over time (a
    sentence's state stays as it is past its length); the backward direction reads every sentence reversed within
    its length.

    x: S x B x E, lengths: B, flat: the GRU's weights (``flat_gru_weights``), norms: one ``GRUNorms`` per layer
    and direction in ``nn.GRU``'s order, dropout: between layers -> annotations S x B x 2H, final states
    (layers * 2) x B x H.
    """
    steps, bsz = x.shape[:2]
    time = torch.arange(steps, device=x.device).unsqueeze(1)  # S x 1
    keep = (time < lengths).unsqueeze(2)  # S x B x 1
    reverse = torch.where(keep.squeeze(2), lengths - 1 - time, time)  # S x B, its own inverse
    finals: List[Tensor] = []
    directions: List[Tensor] = []
    layer_input = x
    for i, norm in enumerate(norms):  # i = 2 * layer + direction
        if i > 0 and i % 2 == 0:  # a new layer reads the one below (dropout between layers, as nn.GRU)
            layer_input = dropout(torch.cat([directions[0], gather_time(directions[1], reverse)], 2))
            directions = []
        inputs = layer_input if i % 2 == 0 else gather_time(layer_input, reverse)
        w_ih, w_hh, b_ih, b_hh = flat[4 * i: 4 * i + 4]
        hidden = x.new_zeros(bsz, w_hh.size(1))
        outputs: List[Tensor] = []
        # LN works row by row, so the input side is normalised for all steps at once; only LN(U h + b) is per step
        for t, input_gates in enumerate(norm.input(F.linear(inputs, w_ih, b_ih)).unbind(0)):
            hidden_gates = norm.hidden(F.linear(hidden, w_hh, b_hh))
            hidden = torch.where(keep[t], gru_update(input_gates, hidden_gates, hidden), hidden)
            outputs.append(hidden)
        finals.append(hidden)
        directions.append(torch.stack(outputs))
    out = torch.cat([directions[0], gather_time(directions[1], reverse)], dim=2)
    return out.masked_fill(~keep, 0.0), torch.stack(finals)


class FedGRUCell(nn.GRUCell):
    """``nn.GRUCell`` over ``[E y; f]`` (embedding size E, fed size F), with its input weights split by part and,
    with ``layer_norm``, normalised gates (``norms``).

    The parameters and their names are ``nn.GRUCell``'s (checkpoints are unchanged), plus ``norms`` with
    ``layer_norm``.
    """

    def __init__(self, embed_dim: int, feed_dim: int, hidden_size: int, layer_norm: bool = False) -> None:
        super().__init__(embed_dim + feed_dim, hidden_size)
        self.embed_dim = embed_dim
        self.norms: Optional[GRUNorms] = GRUNorms(hidden_size) if layer_norm else None

    def embedding_gates(self, emb: Tensor) -> Tensor:
        """``W_e E y + b_i`` for any number of positions: ... x E -> ... x 3H."""
        return F.linear(emb, self.weight_ih[:, : self.embed_dim], self.bias_ih)

    @property
    def feed_weight(self) -> Tensor:
        """``W_f``, the input weights of the fed part: 3H x F."""
        return self.weight_ih[:, self.embed_dim :]

    def feed_gates(self, fed: Tensor) -> Tensor:
        """``W_f f`` (no bias) for any number of positions: ... x F -> ... x 3H."""
        return F.linear(fed, self.feed_weight)

    def forward(self, x: Tensor, hidden: Optional[Tensor] = None) -> Tensor:
        """The cell over its whole input ``[E y; f]`` (B x (E + F)), hidden: B x H -> B x H; with ``norms``
        too (``nn.GRUCell.forward`` would leave them out)."""
        assert hidden is not None
        return self.update(F.linear(x, self.weight_ih, self.bias_ih), F.linear(hidden, self.weight_hh, self.bias_hh),
                           hidden)

    def update(self, input_gates: Tensor, hidden_gates: Tensor, hidden: Tensor) -> Tensor:
        """The new state from the whole input gates ``W x + b_i`` and hidden gates ``U h + b_h`` (B x 3H)."""
        if self.norms is None:
            return gru_update(input_gates, hidden_gates, hidden)
        return self.norms.update(input_gates, hidden_gates, hidden)


class NormGRUCell(FedGRUCell):
    """A layer-normalised ``nn.GRUCell`` (the decoder's layers above the first, with ``--layer-norm``): a
    ``FedGRUCell`` with nothing fed, whose ``forward`` keeps the norms."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, 0, hidden_size, layer_norm=True)


# PyTorch's RNN kernels and an nn.GRU's flat weight list are private API (``_VF.gru``, ``_flat_weights``), used
# the way ``nn.GRU.forward`` uses them. The encoder reaches them only through the three functions below.


def flat_gru_weights(gru: nn.GRU) -> List[Tensor]:
    """Every layer's and direction's ``[weight_ih, weight_hh, bias_ih, bias_hh]`` of ``gru``, in one list in
    ``nn.GRU``'s order (layer by layer, forward then backward): its ``_flat_weights`` (the list its forward hands
    the kernel: on GPUs, views into one contiguous block), or the public ``all_weights`` where a PyTorch lacks
    them."""
    flat = getattr(gru, "_flat_weights", None)
    if flat is not None:
        return list(flat)
    weights: List[Tensor] = []
    for direction in gru.all_weights:
        weights.extend(direction)
    return weights


def gru_kernel(x: Tensor, h0: Tensor, weights: List[Tensor], num_layers: int, dropout: float, train: bool,
               bidirectional: bool) -> Tuple[Tensor, Tensor]:
    """PyTorch's GRU kernel (cuDNN on GPUs) over a time-major padded batch, as ``nn.GRU.forward`` calls it, but
    with the caller deciding whether dropout between layers is on (``train``: ``--retain-dropout`` too).
    x S x B x I, h0 (num_layers * directions) x B x H -> outputs S x B x (directions * H), final states like h0."""
    return _VF.gru(x, h0, weights, True, num_layers, dropout, train, bidirectional, False)


def packed_gru_kernel(x: Tensor, lengths: Tensor, weights: List[Tensor], num_layers: int, hidden_size: int,
                      dropout: float, train: bool) -> Tuple[Tensor, Tensor]:
    """A bidirectional stack over a right-padded batch through ``pack_padded_sequence`` (cuDNN runs packed
    batches best), as ``nn.GRU.forward`` runs a packed batch, dropout between layers where ``train``.
    x S x B x I, lengths B -> outputs S x B x 2H (zero at padding), final states (num_layers * 2) x B x H."""
    packed = pack_padded_sequence(x, lengths.cpu(), enforce_sorted=False)
    h0 = x.new_zeros(2 * num_layers, x.size(1), hidden_size)
    data, final = _VF.gru(packed.data, packed.batch_sizes, h0, weights, True, num_layers, dropout, train, True)
    out = PackedSequence(data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)
    return pad_packed_sequence(out, total_length=x.size(0))[0], final.index_select(1, packed.unsorted_indices)
