"""The decoder's first GRU layer, whose input is the target embedding and what the attention family feeds it.

The decoder never calls the cell as a whole: the embedding part of its input gates does not depend on the
previous step and is computed for all steps in one matrix multiply (``embedding_gates``); the fed part (the
context ``c_i``, or Luong's ``~s_{t-1}``) and the hidden gates come per step; ``gru_update`` combines them with
``torch.nn.GRUCell``'s equations. PyTorch applies the reset gate after the recurrent matrix,
``r * (U_n h + b_n)``; the paper's Appendix A.2.2 applies it before, ``U (r * s)``: this model follows PyTorch.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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


class FedGRUCell(nn.GRUCell):
    """``nn.GRUCell`` over ``[E y; f]`` (embedding size E, fed size F), with its input weights split by part.

    The parameters and their names are ``nn.GRUCell``'s (checkpoints are unchanged).
    """

    def __init__(self, embed_dim: int, feed_dim: int, hidden_size: int) -> None:
        super().__init__(embed_dim + feed_dim, hidden_size)
        self.embed_dim = embed_dim

    def embedding_gates(self, emb: Tensor) -> Tensor:
        """``W_e E y + b_i`` for any number of positions: ... x E -> ... x 3H."""
        return F.linear(emb, self.weight_ih[:, : self.embed_dim], self.bias_ih)

    @property
    def feed_weight(self) -> Tensor:
        """``W_f``, the input weights of the fed part: 3H x F."""
        return self.weight_ih[:, self.embed_dim :]
