"""The model's equations written plainly, one sentence and one step at a time: the yardstick for the fast model.

Nothing here is shared with the package's code paths: no packing, no batching, no precomputed keys, no fused
gates. It reads the fast model's parameters by name, so the two can be compared on the same weights.
"""

from typing import List

import torch
from torch import Tensor


def layer_norm(v: Tensor, norm) -> Tensor:
    """Ba et al. (2016): (v - mean) / sqrt(variance + eps), times the gain, plus the bias (``norm``'s)."""
    mean = v.mean()
    variance = ((v - mean) ** 2).mean()
    return (v - mean) / torch.sqrt(variance + norm.eps) * norm.weight + norm.bias


def gate_norm(pre: Tensor, norm) -> Tensor:
    """``--layer-norm`` of one side's pre-activations (3H): [r; z] (2H) and n (H) normalised apart."""
    size = pre.numel() // 3
    return torch.cat([layer_norm(pre[: 2 * size], norm.gates), layer_norm(pre[2 * size :], norm.candidate)])


def gru(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor, norms=None) -> Tensor:
    """Cho et al. (2014) GRU in PyTorch's parameterisation (gate blocks r, z, n in that order); with ``norms``
    (a ``GRUNorms``), its input and recurrent pre-activations layer-normalised."""
    size = h.numel()
    x_gates, h_gates = w_ih @ x + b_ih, w_hh @ h + b_hh  # [W_r; W_z; W_n] x + b, [U_r; U_z; U_n] h + b
    if norms is not None:
        x_gates, h_gates = gate_norm(x_gates, norms.input), gate_norm(h_gates, norms.hidden)
    r = torch.sigmoid(x_gates[:size] + h_gates[:size])
    z = torch.sigmoid(x_gates[size : 2 * size] + h_gates[size : 2 * size])
    n = torch.tanh(x_gates[2 * size :] + r * h_gates[2 * size :])
    return (1 - z) * n + z * h


def encode(model, src: List[int]):
    """Annotations h_j = [h->_j; h<-_j] (S x 2H) and the decoder's initial states (one per layer)."""
    enc = model.encoder
    x = [enc.embed_tokens.weight[token] for token in src]
    size = enc.hidden_size
    for layer in range(enc.gru.num_layers):
        p = {name: getattr(enc.gru, f"{name}_l{layer}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
        q = {name: getattr(enc.gru, f"{name}_l{layer}_reverse") for name in p}
        norms = [None, None] if enc.norms is None else [enc.norms[2 * layer], enc.norms[2 * layer + 1]]
        forward, h = [], torch.zeros(size)
        for j in range(len(x)):
            h = gru(x[j], h, p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"], norms[0])
            forward.append(h)
        backward, h = [None] * len(x), torch.zeros(size)
        for j in reversed(range(len(x))):
            h = gru(x[j], h, q["weight_ih"], q["weight_hh"], q["bias_ih"], q["bias_hh"], norms[1])
            backward[j] = h
        x = [torch.cat([f, b]) for f, b in zip(forward, backward)]
    s0 = torch.tanh(enc.init_state.weight @ torch.cat([forward[-1], backward[0]]) + enc.init_state.bias)
    return torch.stack(x), list(s0.view(enc.decoder_layers, enc.decoder_hidden_size))


def output_layer(dec, t: Tensor) -> Tensor:
    if dec.deep_output is not None:
        t = dec.deep_output.weight @ t + dec.deep_output.bias
        if dec.output_activation == "maxout":  # max over consecutive pairs of units
            t = torch.stack([torch.max(t[2 * k], t[2 * k + 1]) for k in range(t.numel() // 2)])
        elif dec.output_activation == "tanh":
            t = torch.tanh(t)
    return dec.output_projection.weight @ t + dec.output_projection.bias


def softmax(e: Tensor) -> Tensor:
    return torch.exp(e - e.max()) / torch.exp(e - e.max()).sum()


def decode(model, src: List[int], prev: List[int]):
    """Logits (T x V) and attention (T x S; None without attention) for one sentence, teacher-forced on ``prev``."""
    dec = model.decoder
    h, states = encode(model, src)
    att = dec.attention
    half = h.size(1) // 2
    fixed = torch.cat([h[-1][:half], h[0][half:]])  # [h->_Tx; h<-_1] (--attention-type none)
    logits, attention = [], []
    feed = torch.zeros(dec.hidden_size)  # Luong's ~s_0
    for token in prev:
        y = dec.embed_tokens.weight[token]
        if dec.attention_type == "additive":
            # e_ij = v^T tanh(W s_{i-1} + U h_j);  c_i = sum_j alpha_ij h_j
            e = torch.stack(
                [att.v @ torch.tanh(att.query_proj.weight @ states[-1] + att.key_proj.weight @ h_j + att.key_proj.bias)
                 for h_j in h]
            )
            alpha = softmax(e)
            c = sum(a * h_j for a, h_j in zip(alpha, h))
            below = torch.cat([y, c])
        elif dec.attention_type == "none":
            c = fixed
            below = torch.cat([y, c])
        else:
            below = torch.cat([y, feed])
        new_states = []
        for layer, cell in enumerate(dec.layers):
            s = gru(below, states[layer], cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh,
                    getattr(cell, "norms", None))
            new_states.append(s)
            below = s
        states = new_states
        s = states[-1]
        if dec.attention_type in ("additive", "none"):
            t = torch.cat([s, c, y])  # deep output over [s_i; c_i; E y_{i-1}]
        else:
            if att.kind == "dot":
                e = torch.stack([s @ h_j for h_j in h])
            else:
                e = torch.stack([s @ (att.key_proj.weight @ h_j) for h_j in h])
            alpha = softmax(e)
            c = sum(a * h_j for a, h_j in zip(alpha, h))
            feed = torch.tanh(att.combine.weight @ torch.cat([c, s]) + att.combine.bias)  # ~s_t
            t = feed
        logits.append(output_layer(dec, t))
        if dec.attention_type != "none":
            attention.append(alpha)
    return torch.stack(logits), (torch.stack(attention) if attention else None)
