"""The bidirectional GRU encoder (Bahdanau et al. 2015, Section 3.2 and Appendix A.2.1)."""

from typing import List, Optional, Tuple

import torch
from fairseq.models import FairseqEncoder
from torch import Tensor, nn

from . import precision
from .dropout import Dropout, drop_words
from .encoder_out import (ANNOTATIONS, DECODER_INIT, PADDING_MASK, ROW_COPIES, SUMMARY, EncoderOut, copies_after,
                          row_copies)
from .gru import GRUNorms, flat_gru_weights, gather_time, gru_kernel, norm_gru, packed_gru_kernel


def roll_columns(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate every sentence of a time-major batch along time: ``out[t, b] = x[(t + shift[b]) % T, b]``.

    Turns a left-padded batch into a right-padded one (``shift = number of pads``) and back
    (``shift = length``). x: T x B x C, shift: B (long).
    """
    steps = x.size(0)
    return gather_time(x, (torch.arange(steps, device=x.device).unsqueeze(1) + shift.unsqueeze(0)) % steps)


def build_embedding(dictionary, embed_dim: int) -> nn.Embedding:
    """Token embeddings, uniform in [-0.1, 0.1] as in lstm.py, zero (and never updated) at the padding index."""
    embedding = nn.Embedding(len(dictionary), embed_dim, padding_idx=dictionary.pad())
    nn.init.uniform_(embedding.weight, -0.1, 0.1)
    nn.init.zeros_(embedding.weight[dictionary.pad()])
    return embedding


class BiGRUEncoder(FairseqEncoder):
    """Annotations ``h_j = [h->_j; h<-_j]`` from a bidirectional GRU, exact for left- or right-padded batches.

    Also computes the decoder's initial state from the final states of both directions of the top layer,
    ``s_0 = tanh(W_s [h->_{T_x}; h<-_1])`` (the reference notebook; the paper uses ``h<-_1`` alone).
    """

    def __init__(
        self,
        dictionary,
        embed_dim: int,
        hidden_size: int,
        num_layers: int,
        decoder_hidden_size: int,
        decoder_layers: int,
        dropout: float,
        max_positions: int,
        word_dropout: float = 0.0,
        layer_norm: bool = False,
    ) -> None:
        super().__init__(dictionary)
        self.padding_idx = dictionary.pad()
        self.dropout_module = Dropout(dropout, module_name=type(self).__name__)
        self.word_dropout = word_dropout
        self.hidden_size = hidden_size
        self.decoder_layers = decoder_layers
        self.decoder_hidden_size = decoder_hidden_size
        self.max_source_positions = max_positions
        self.embed_tokens = build_embedding(dictionary, embed_dim)
        self.gru = nn.GRU(
            embed_dim,
            hidden_size,
            num_layers=num_layers,
            bidirectional=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.init_state = nn.Linear(2 * hidden_size, decoder_layers * decoder_hidden_size)  # W_s
        # --layer-norm: one GRUNorms per layer and direction, in nn.GRU's order (layer by layer, forward first)
        self.norms: Optional[nn.ModuleList] = (
            nn.ModuleList([GRUNorms(hidden_size) for _ in range(2 * num_layers)]) if layer_norm else None
        )

    @property
    def output_dim(self) -> int:
        """Size of one annotation ``h_j``: 2 x hidden size."""
        return 2 * self.hidden_size

    def forward(self, src_tokens: Tensor, src_lengths: Optional[Tensor] = None) -> EncoderOut:
        """Encode a batch.

        Args:
            src_tokens: B x S token ids, left- or right-padded.
            src_lengths: B lengths (unused: lengths are read off the padding, so they cannot disagree).
        Returns:
            ``encoder_out``: [S x B x 2H] annotations in the same padding layout as ``src_tokens``
            (zero at padding); ``encoder_padding_mask``: [B x S], True at padding; ``decoder_init``:
            [B x L x H_dec], the decoder's initial state for each of its L layers; ``encoder_summary``:
            [B x 2H], ``[h->_Tx; h<-_1]`` of the top layer (what the initial state is computed from, and the fixed
            context of ``--attention-type none``).
        """
        bsz, src_len = src_tokens.shape
        padding_mask = src_tokens.eq(self.padding_idx)
        x = drop_words(self.embed_tokens(src_tokens), self.word_dropout, self.training)
        x = self.dropout_module(x)
        x = x.transpose(0, 1)  # S x B x E

        if padding_mask.any() or self.norms is not None:
            lengths = src_len - padding_mask.sum(dim=1)
            left_padded = bool(padding_mask[:, 0].any())
            if left_padded:
                x = roll_columns(x, src_len - lengths)
            if self.norms is not None:
                out, final = norm_gru(x, lengths, self.gru_weights(), self.norms, self.dropout_module)
            elif x.device.type == "cpu":
                out, final = self._padded_gru(x, lengths)
            else:
                out, final = self._packed_gru(x, lengths)
            if left_padded:
                out = roll_columns(out, lengths)
        else:
            out, final = self._full_gru(x)

        # final: (layers * 2) x B x H; the top layer's forward state saw the whole sentence, and so did its
        # backward state (which ends at the first token).
        top = torch.cat([final[-2], final[-1]], dim=1)
        init = torch.tanh(self.init_state(top)).view(bsz, self.decoder_layers, self.decoder_hidden_size)
        out = self.dropout_module(out)
        return {
            ANNOTATIONS: [out],
            PADDING_MASK: [padding_mask],
            DECODER_INIT: [init],
            SUMMARY: [top],
        }

    def _padded_gru(self, x: Tensor, lengths: Tensor) -> Tuple[Tensor, Tensor]:
        """The bidirectional GRU over a right-padded batch, exact for every sentence and zero at padding.

        Each direction runs as one unidirectional call of ``self.gru``'s own weights on the padded batch; the
        backward direction reads every sentence reversed within its length, so that padding comes last in both.
        On padded (not packed) input PyTorch's CPU GRU computes the input gates of all steps in one matrix
        multiply, which makes this faster than ``pack_padded_sequence`` on CPU (``_packed_gru``).

        x: S x B x E, lengths: B -> annotations S x B x 2H, final states (layers * 2) x B x H, ordered as
        ``nn.GRU`` orders them (layer by layer, forward then backward).
        """
        steps, bsz = x.shape[:2]
        time = torch.arange(steps, device=x.device).unsqueeze(1)  # S x 1
        valid = time < lengths  # S x B
        reverse = torch.where(valid, lengths - 1 - time, time)  # S x B, its own inverse
        last = (lengths - 1).view(1, bsz, 1).expand(1, bsz, self.hidden_size)
        h0 = x.new_zeros(1, bsz, self.hidden_size)
        flat = self.gru_weights()
        finals = []
        for layer in range(self.gru.num_layers):
            if layer > 0:
                x = self.dropout_module(x)  # as nn.GRU between layers
            directions: List[Tensor] = []
            for direction, inputs in enumerate([x, gather_time(x, reverse)]):
                first = 4 * (2 * layer + direction)  # nn.GRU's order: layer by layer, forward then backward
                weights = flat[first: first + 4]  # weight_ih, weight_hh, bias_ih, bias_hh
                out, _ = self._kernel(inputs, h0, weights, num_layers=1, bidirectional=False)
                finals.append(out.gather(0, last).squeeze(0))
                directions.append(out)
            x = torch.cat([directions[0], gather_time(directions[1], reverse)], dim=2)
        return x.masked_fill(~valid.unsqueeze(2), 0.0), torch.stack(finals)

    def _full_gru(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """``self.gru`` on a batch without padding (S x B x E), the call ``nn.GRU`` makes (cuDNN on GPUs), with
        dropout between layers wherever this encoder's dropout is active (``--retain-dropout`` included)."""
        h0 = x.new_zeros(self.gru.num_layers * 2, x.size(1), self.hidden_size)
        return self._kernel(x, h0, self.gru_weights(), self.gru.num_layers, bidirectional=True)

    def _kernel(
        self, x: Tensor, h0: Tensor, weights: List[Tensor], num_layers: int, bidirectional: bool
    ) -> Tuple[Tensor, Tensor]:
        """PyTorch's GRU kernel (``gru.gru_kernel``), dropout between layers wherever this encoder's dropout is
        active. autocast leaves PyTorch's CPU GRU in float32, so under autocast its operands are cast to autocast's
        dtype here (``precision.cast``; a no-op otherwise)."""
        weights = [precision.cast(w) for w in weights]
        return gru_kernel(precision.cast(x), precision.cast(h0), weights, num_layers, self.gru.dropout,
                          self.dropout_module.active, bidirectional)

    def gru_weights(self) -> List[Tensor]:
        """``self.gru``'s weights as its kernel takes them (``gru.flat_gru_weights``)."""
        return flat_gru_weights(self.gru)

    def _packed_gru(self, x: Tensor, lengths: Tensor) -> Tuple[Tensor, Tensor]:
        """The same through ``pack_padded_sequence``: on GPUs, where cuDNN runs packed batches well and one
        direction's weights alone are not the contiguous block it expects. Dropout between layers wherever this
        encoder's dropout is active (``--retain-dropout`` included), as on the CPU path."""
        return packed_gru_kernel(x, lengths, self.gru_weights(), self.gru.num_layers, self.hidden_size,
                                 self.gru.dropout, self.dropout_module.active)

    def reorder_encoder_out(self, encoder_out: EncoderOut, new_order: Tensor) -> EncoderOut:
        """Select and reorder the batch (beam search): every entry, along its batch axis.

        Beam search first repeats every sentence ``beam`` times, then reorders the hypotheses at every step,
        mostly within their sentence. The result records (``row_copies``) which rows are copies of one sentence,
        so that a reorder that changes nothing but the order of copies returns the same tensors without copying
        them, and the decoder keeps one source row per sentence (``GRUDecoder._source``).
        """
        rows = encoder_out[DECODER_INIT][0].size(0)
        copies = row_copies(encoder_out)
        new_copies = copies_after(new_order, copies)
        if new_order.numel() == rows:
            blocks = new_order.view(-1, new_copies)[:, 0] // new_copies if new_copies == copies else new_order
            if torch.equal(blocks, torch.arange(blocks.numel(), device=blocks.device)):
                return encoder_out  # every row gets itself or a copy of itself
        reordered: EncoderOut = {}
        for key, value in encoder_out.items():  # the annotations are time-major (S x B x C), the rest batch-first
            if key != ROW_COPIES:
                reordered[key] = [value[0].index_select(1 if key == ANNOTATIONS else 0, new_order)]
        if new_copies > 1:
            reordered[ROW_COPIES] = [torch.tensor(new_copies)]
        return reordered

    def max_positions(self) -> int:
        return self.max_source_positions
