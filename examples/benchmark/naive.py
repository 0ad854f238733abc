"""The benchmark's naive baseline: the reference notebook's (tutorial's) batched formulation of the additive model,
run on the fast model's weights (tests/test_equations.py checks that it computes the same function)."""

import torch
import torch.nn.functional as F
from torch import Tensor


def tutorial_forward(model, src_tokens: Tensor, src_lengths: Tensor, prev_output_tokens: Tensor) -> Tensor:
    """The reference notebook's (tutorial's) batched formulation on the fast model's weights: B x T x V logits.

    Inside the step loop it recomputes what the fast model computes once: the attention MLP over
    ``[s_{i-1} repeated S times; h_j]`` for every source position, the GRU's input gates from the concatenated
    ``[E y_{i-1}; c_i]`` and the output layer. Additive attention, one decoder layer, no deep-output layer (the
    ``bahdanau_gru`` configuration). The benchmark's naive baseline.
    """
    enc, dec = model.encoder, model.decoder
    att, cell = dec.attention, dec.layers[0]
    assert dec.attention_type == "additive" and dec.num_layers == 1 and dec.deep_output is None
    encoder_out = enc(src_tokens, src_lengths)
    encoder_outputs = encoder_out["encoder_out"][0]  # S x B x C
    padding = encoder_out["encoder_padding_mask"][0]  # B x S
    hidden = encoder_out["decoder_init"][0][:, 0]  # B x H
    attn_weight = torch.cat([att.query_proj.weight, att.key_proj.weight], dim=1)  # the notebook's attn Linear
    src_len = encoder_outputs.size(0)
    logits = []
    for t in range(prev_output_tokens.size(1)):
        embedded = F.dropout(dec.embed_tokens(prev_output_tokens[:, t]), p=dec.dropout_module.p, training=dec.training)
        repeated = hidden.unsqueeze(1).repeat(1, src_len, 1)  # B x S x H
        outputs = encoder_outputs.permute(1, 0, 2)  # B x S x C
        energy = torch.tanh(F.linear(torch.cat([repeated, outputs], dim=2), attn_weight, att.key_proj.bias))
        scores = (energy @ att.v).masked_fill(padding, float("-inf"))
        a = torch.softmax(scores, dim=1).unsqueeze(1)  # B x 1 x S
        weighted = torch.bmm(a, outputs).squeeze(1)  # B x C
        hidden = cell(torch.cat([embedded, weighted], dim=1), hidden)
        output = F.dropout(hidden, p=dec.dropout_module.p, training=dec.training)
        logits.append(dec.output_projection(torch.cat([output, weighted, embedded], dim=1)))
    return torch.stack(logits, dim=1)
