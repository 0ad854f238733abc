"""The model as ONNX graphs: the encoder's GRU layers step by step, its outputs, and one decoder step.

``export.py`` writes them with ``torch.onnx.export(..., dynamo=True)`` (the ``torch.export``-based exporter) from
the modules below, which call the model's own code (``gru.gru_update``, the layer normalisations, the decoder
family's ``_new_source``, ``_reads``, ``_step`` and ``output_layer``), so that the graphs compute what fairseq's
generator computes. The loops run outside them, in numpy (``deploy/translator.py``, ``deploy/search.py``).

The encoder is one of two forms. ``EncoderGraph`` (float32 models without ``--layer-norm``): ``src_tokens`` B x S
(right-padded), ``src_lengths`` B -> ``decoder_init`` and the source side (as ``EncoderOutputGraph`` below), the
bidirectional GRU as ONNX's ``GRU`` operator (``linear_before_reset=1`` is PyTorch's GRU; ``sequence_lens`` makes
it exact for every sentence of a padded batch): the exporter's own translation of ``nn.GRU`` fixes the time axis
to the example's length, so the graph calls a custom operator (``fairseq_bahdanau::bigru``) translated by
``bigru_onnx``. Or, with ``--layer-norm`` (which the operator does not have) and for ``--quantize`` (the operator
has no int8 form, and reads its two 3H x H float32 matrices at every position), the layers step by step, for each
layer ``l`` (``deploy.translator._encode_steps`` loops over positions, both directions at once, the backward
direction reading each sentence reversed within its own length, so a padded batch is exact):

* ``EncoderInputGraph``: the layer's input gates of every position and both directions, ``W_ih x + b_ih``
  (layer-normalised with ``--layer-norm``): ``x`` (layer 0: ``src_tokens`` B x S; above: the layer below's
  annotations S x B x 2H) -> ``gates`` S x B x 2 x 3H;
* ``EncoderStepGraph``: one step of both directions, ``hidden`` 2 x B x H and ``gates`` 2 x B x 3H -> ``hidden``
  2 x B x H (PyTorch's GRU equations, ``gru.gru_update``); its recurrent matrices are whole constant matrices,
  which ``--quantize`` makes int8;
* ``EncoderOutputGraph``: the top layer's ``annotations`` S x B x 2H (zero at padding), its final states
  ``top`` B x 2H (``[h->_Tx; h<-_1]``) and ``src_lengths`` -> ``decoder_init`` B x L x H and the decoder family's
  source side (``SOURCE_OUTPUTS``): additive, dot, general: ``keys`` B x S x A, ``values`` B x S x V and
  ``mask_bias`` B x S (0, or -inf at padding), one row per sentence, which the step reads for a group of
  hypotheses per sentence; none (the fixed context): ``context`` B x C and ``gates`` B x 3H, which the runtime
  repeats for every hypothesis.

``StepGraph``: ``prev_tokens`` N, ``hidden`` N x L x H, Luong's ``feed`` N x H (dot, general), the source side,
``temperature`` (1) -> ``lprobs`` N x V (``log_softmax(logits / temperature)``, as fairseq's ensemble scores a
step), the ``TOP`` best of each row (``top_values``, ``top_indices``), ``hidden`` and ``feed`` after the step, and
``attn`` N x S (attention families). With attention the N hypotheses come in B groups of N / B, group b reading
row b of the source side.
"""

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .encoder_out import ANNOTATIONS, DECODER_INIT, PADDING_MASK, SUMMARY
from .gru import gru_update

#: the most tokens of each hypothesis the step graph ranks (``top_values``, ``top_indices``): 2 x 16 + 3, what
#: the search needs for beams of up to 16 (``deploy/search.py``, ``_top_candidates``)
TOP = 35

#: the encoder graph's outputs after ``decoder_init``, by decoder family
SOURCE_OUTPUTS = {"additive": ["keys", "values", "mask_bias"], "luong": ["keys", "values", "mask_bias"],
                  "none": ["context", "gates"]}


def family(model: nn.Module) -> str:
    """``additive``, ``luong`` (dot, general) or ``none``: which source side and state the decoder has."""
    kind = str(model.decoder.attention_type)
    return {"additive": "additive", "dot": "luong", "general": "luong", "none": "none"}[kind]


def unsupported(model: nn.Module) -> Optional[str]:
    """Why ``model`` cannot be exported as ONNX graphs, or None."""
    if str(getattr(model.decoder, "attention_type", "")) not in ("additive", "dot", "general", "none"):
        return f"unknown --attention-type {model.decoder.attention_type!r}"
    return None


@torch.library.custom_op("fairseq_bahdanau::bigru", mutates_args=())
def bigru(x: Tensor, lengths: Tensor, w: Tensor, r: Tensor, b: Tensor) -> Tuple[Tensor, Tensor]:
    """ONNX's bidirectional ``GRU`` (export only): x S x B x I, lengths B, weights in ONNX's layout -> Y
    S x 2 x B x H (zero past each sentence's length), Y_h 2 x B x H."""
    raise NotImplementedError("fairseq_bahdanau::bigru exists only to be exported to ONNX")


@bigru.register_fake
def _bigru_shapes(x: Tensor, lengths: Tensor, w: Tensor, r: Tensor, b: Tensor) -> Tuple[Tensor, Tensor]:
    steps, bsz, hidden = x.size(0), x.size(1), r.size(-1)
    return x.new_empty(steps, 2, bsz, hidden), x.new_empty(2, bsz, hidden)


def bigru_onnx(hidden_size: int):
    """The ONNX translation of ``bigru`` for GRUs of ``hidden_size`` (onnxscript)."""
    from onnx import TensorProto
    from onnxscript import opset18 as op

    def translate(x, lengths, w, r, b):
        return op.GRU(x, w, r, b, op.Cast(lengths, to=TensorProto.INT32), hidden_size=hidden_size,
                      direction="bidirectional", linear_before_reset=1)

    return translate


class _SplitInputCell(nn.Module):
    """The decoder's first GRU cell (``gru.FedGRUCell``) with its input weights kept as two tensors, the
    embedding's part and the fed part, so that each is a whole constant matrix in the graphs (a slice of one
    would be computed at run time, and ONNX Runtime's quantization would leave it in float32)."""

    def __init__(self, cell: nn.Module) -> None:
        super().__init__()
        self.cell = cell
        embed_dim = cell.embed_dim
        self.embedding_weight = nn.Parameter(cell.weight_ih[:, :embed_dim].detach().clone(), requires_grad=False)
        self.fed_weight = nn.Parameter(cell.weight_ih[:, embed_dim:].detach().clone(), requires_grad=False)
        self.weight_hh, self.bias_hh, self.bias_ih = cell.weight_hh, cell.bias_hh, cell.bias_ih

    def embedding_gates(self, emb: Tensor) -> Tensor:
        return F.linear(emb, self.embedding_weight, self.bias_ih)

    @property
    def feed_weight(self) -> Tensor:
        return self.fed_weight

    def feed_gates(self, fed: Tensor) -> Tensor:
        return F.linear(fed, self.fed_weight)

    def update(self, input_gates: Tensor, hidden_gates: Tensor, hidden: Tensor) -> Tensor:
        return self.cell.update(input_gates, hidden_gates, hidden)


def split_inputs(model: nn.Module) -> nn.Module:
    """A copy of ``model`` for export, whose decoder's first cell is a ``_SplitInputCell``."""
    import copy

    model = copy.deepcopy(model)
    model.decoder.layers[0] = _SplitInputCell(model.decoder.layers[0])
    return model


def _onnx_gates(t: Tensor, hidden: int) -> Tensor:
    """PyTorch's gate order (reset, update, new) -> ONNX's (update, reset, hidden), along the first axis."""
    return torch.cat([t[hidden: 2 * hidden], t[:hidden], t[2 * hidden:]])


class EncoderGraph(nn.Module):
    """The encoder in one graph, its GRU as ONNX's operator, and ``EncoderOutputGraph`` (see the module
    docstring)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        encoder = model.encoder
        self.embed_tokens = encoder.embed_tokens
        self.output = EncoderOutputGraph(model)
        self.hidden_size = encoder.hidden_size
        gru, hidden = encoder.gru, encoder.hidden_size
        for layer in range(gru.num_layers):
            w, r, b = [], [], []
            for suffix in ("", "_reverse"):
                def get(name: str) -> Tensor:
                    return getattr(gru, f"{name}_l{layer}{suffix}").detach()

                w.append(_onnx_gates(get("weight_ih"), hidden))
                r.append(_onnx_gates(get("weight_hh"), hidden))
                b.append(torch.cat([_onnx_gates(get("bias_ih"), hidden), _onnx_gates(get("bias_hh"), hidden)]))
            self.register_buffer(f"w{layer}", torch.stack(w).contiguous())
            self.register_buffer(f"r{layer}", torch.stack(r).contiguous())
            self.register_buffer(f"b{layer}", torch.stack(b).contiguous())
        self.layers = gru.num_layers

    def forward(self, src_tokens: Tensor, src_lengths: Tensor) -> Tuple[Tensor, ...]:
        bsz, steps = src_tokens.shape
        x = self.embed_tokens(src_tokens).transpose(0, 1)  # S x B x E
        final = x.new_zeros(2, bsz, self.hidden_size)
        for layer in range(self.layers):
            y, final = bigru(x, src_lengths, getattr(self, f"w{layer}"), getattr(self, f"r{layer}"),
                             getattr(self, f"b{layer}"))
            x = y.permute(0, 2, 1, 3).reshape(steps, bsz, 2 * self.hidden_size)  # S x B x 2H: [h->_j; h<-_j]
        top = torch.cat([final[0], final[1]], dim=1)  # B x 2H: [h->_Tx; h<-_1]
        return self.output(x, top, src_lengths)


class EncoderInputGraph(nn.Module):
    """Layer ``layer``'s input gates of every position, both directions (see the module docstring)."""

    def __init__(self, model: nn.Module, layer: int) -> None:
        super().__init__()
        encoder = model.encoder
        gru = encoder.gru
        self.embed_tokens = encoder.embed_tokens if layer == 0 else None
        weights = [getattr(gru, f"weight_ih_l{layer}{suffix}").detach() for suffix in ("", "_reverse")]
        biases = [getattr(gru, f"bias_ih_l{layer}{suffix}").detach() for suffix in ("", "_reverse")]
        self.weight = nn.Parameter(torch.cat(weights).clone(), requires_grad=False)  # 2 x 3H x I, stacked
        self.bias = nn.Parameter(torch.cat(biases).clone(), requires_grad=False)
        norms = encoder.norms
        self.norms = None if norms is None else nn.ModuleList([norms[2 * layer].input, norms[2 * layer + 1].input])

    def forward(self, x: Tensor) -> Tensor:
        if self.embed_tokens is not None:
            x = self.embed_tokens(x).transpose(0, 1)  # B x S -> S x B x E
        gates = F.linear(x, self.weight, self.bias).unflatten(-1, (2, -1))  # S x B x 2 x 3H
        if self.norms is not None:
            gates = torch.stack([self.norms[0](gates[:, :, 0]), self.norms[1](gates[:, :, 1])], dim=2)
        return gates


class EncoderStepGraph(nn.Module):
    """One step of layer ``layer``'s two directions (see the module docstring)."""

    def __init__(self, model: nn.Module, layer: int) -> None:
        super().__init__()
        encoder = model.encoder
        gru = encoder.gru

        def weight(name: str) -> nn.Parameter:
            return nn.Parameter(getattr(gru, name).detach().clone(), requires_grad=False)

        self.forward_weight, self.forward_bias = weight(f"weight_hh_l{layer}"), weight(f"bias_hh_l{layer}")
        self.backward_weight = weight(f"weight_hh_l{layer}_reverse")
        self.backward_bias = weight(f"bias_hh_l{layer}_reverse")
        norms = encoder.norms
        self.norms = None if norms is None else nn.ModuleList([norms[2 * layer].hidden, norms[2 * layer + 1].hidden])

    def forward(self, hidden: Tensor, gates: Tensor) -> Tensor:
        out = []
        for direction, (w, b) in enumerate([(self.forward_weight, self.forward_bias),
                                            (self.backward_weight, self.backward_bias)]):
            hidden_gates = F.linear(hidden[direction], w, b)
            if self.norms is not None:
                hidden_gates = self.norms[direction](hidden_gates)
            out.append(gru_update(gates[direction], hidden_gates, hidden[direction]))
        return torch.stack(out)


class EncoderOutputGraph(nn.Module):
    """The decoder's initial state and source side from the top layer (see the module docstring)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        encoder = model.encoder
        self.init_state = encoder.init_state
        self.decoder = model.decoder
        self.decoder_layers = encoder.decoder_layers
        self.decoder_hidden_size = encoder.decoder_hidden_size
        self.family = family(model)

    def forward(self, annotations: Tensor, top: Tensor, src_lengths: Tensor) -> Tuple[Tensor, ...]:
        bsz, steps = top.size(0), annotations.size(0)
        init = torch.tanh(self.init_state(top)).view(bsz, self.decoder_layers, self.decoder_hidden_size)
        padding_mask = torch.arange(steps).unsqueeze(0) >= src_lengths.unsqueeze(1)  # B x S
        encoder_out = {ANNOTATIONS: [annotations], PADDING_MASK: [padding_mask], DECODER_INIT: [init],
                       SUMMARY: [top]}
        source = self.decoder._new_source(encoder_out, incremental=False)
        return (init, *[getattr(source, name) for name in SOURCE_OUTPUTS[self.family]])


class StepGraph(nn.Module):
    """One decoder step for N hypotheses (see the module docstring)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.decoder = model.decoder
        self.family = family(model)
        # the file format's names (step_io, SOURCE_OUTPUTS) are the family's fields: a field added to one and not
        # the other stops the export here rather than mixing inputs up
        inputs, _ = step_io(self.family)
        fields = ["hidden", *self.decoder.State._fields[1:], *self.decoder.Source._fields]
        assert inputs[1:-1] == fields, (inputs, fields)

    def forward(self, prev_tokens: Tensor, hidden: Tensor, *rest: Tensor) -> Tuple[Tensor, ...]:
        decoder = self.decoder
        names = decoder.State._fields[1:]  # after hidden: Luong's feed
        state = decoder.State(list(hidden.unbind(1)), *rest[:len(names)])
        source_names = SOURCE_OUTPUTS[self.family]
        source = decoder.Source(**dict(zip(source_names, rest[len(names):len(names) + len(source_names)])))
        temperature = rest[-1]
        emb = decoder.embed_tokens(prev_tokens)  # N x E
        step = decoder._step(emb, decoder.layers[0].embedding_gates(emb), state, decoder._reads(source, 1))
        lprobs = F.log_softmax(decoder.output_layer(step.features).float() / temperature, dim=-1)
        top_values, top_indices = torch.topk(lprobs, min(TOP, lprobs.size(1)), dim=1)
        outputs: List[Tensor] = [lprobs, top_values, top_indices, torch.stack(step.state.hidden, dim=1)]
        outputs += [getattr(step.state, name) for name in names]
        if step.attn is not None:
            outputs.append(step.attn)
        return tuple(outputs)


def step_io(kind: str) -> Tuple[List[str], List[str]]:
    """The step graph's input and output names for a decoder family."""
    inputs = ["prev_tokens", "hidden"] + (["feed"] if kind == "luong" else []) + SOURCE_OUTPUTS[kind] + ["temperature"]
    outputs = (["lprobs", "top_values", "top_indices", "hidden_out"] + (["feed_out"] if kind == "luong" else [])
               + ([] if kind == "none" else ["attn"]))
    return inputs, outputs

