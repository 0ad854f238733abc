"""What the encoder hands the decoder, and the beam-row protocol between them.

``encoder_out`` is fairseq's dict of one-element lists; its keys are named here, once:

* ``ANNOTATIONS`` (``"encoder_out"``, fairseq's name): the top layer's annotations ``h_j``, S x B x C, time-major;
* ``PADDING_MASK`` (``"encoder_padding_mask"``): B x S, True at padding;
* ``DECODER_INIT``: the decoder's initial states ``tanh(W_s [h->_Tx; h<-_1])``, B x L x H;
* ``SUMMARY``: the top layer's final states ``[h->_Tx; h<-_1]``, B x C (the fixed context of the RNNencdec);
* ``ROW_COPIES``: present (a 0-d tensor k > 1) when every block of k consecutive rows holds copies of one
  sentence, as beam search makes them: the decoder then keeps one source row per sentence.

Beam search repeats each sentence ``beam`` times, then reorders hypotheses at every step, mostly within their
sentence; ``row_copies``, ``block_owners`` and ``copies_after`` are how the encoder's ``reorder_encoder_out`` and
the decoder's ``reorder_incremental_state`` tell a reorder that keeps sentences' rows together (select whole
blocks, or nothing) from one that does not (one row per hypothesis from then on).
"""

from typing import Dict, List, Optional

import torch
from torch import Tensor

EncoderOut = Dict[str, List[Tensor]]

ANNOTATIONS = "encoder_out"
PADDING_MASK = "encoder_padding_mask"
DECODER_INIT = "decoder_init"
SUMMARY = "encoder_summary"
ROW_COPIES = "row_copies"


def row_copies(encoder_out: EncoderOut) -> int:
    """k when every block of k consecutive rows of ``encoder_out`` holds copies of one sentence (beam search), else
    1: the entry ``"row_copies": [tensor(k)]``."""
    if ROW_COPIES in encoder_out:
        return int(encoder_out[ROW_COPIES][0])
    return 1


def block_owners(new_order: Tensor, block: int) -> Optional[Tensor]:
    """When every block of ``block`` consecutive entries of ``new_order`` takes its rows from one block of the old
    batch (beam search reordering hypotheses within their sentence): the old block of each new block (a 1-d
    long tensor); otherwise (or for blocks of 1) None."""
    if block > 1 and new_order.numel() % block == 0:
        owners = (new_order // block).view(-1, block)
        if torch.equal(owners, owners[:, :1].expand_as(owners)):
            return owners[:, 0]
    return None


def copies_after(new_order: Tensor, copies: int) -> int:
    """``row_copies`` of a batch reordered by ``new_order`` from one with ``copies``: its blocks stay copies when
    each new block takes all its rows from one old block, and a run of k repetitions of each row (beam search's
    first expansion) makes blocks of k copies."""
    if block_owners(new_order, copies) is not None:
        return copies
    runs = torch.unique_consecutive(new_order, return_counts=True)[1]
    if runs.numel() > 0 and int(runs[0]) > 1 and bool((runs == runs[0]).all()):
        return int(runs[0])
    return 1
