"""The TorchScript translator of fairseq_bahdanau 0.1 (main at e3a1b2a), kept for the deployment benchmark only.

Until issue 34, ``python -m fairseq_bahdanau.export`` wrote this: fairseq's ``SequenceGenerator`` scripted with
the model inside a ``Translator`` (``torch.jit.script``, which torch 2.13 deprecates), with ``--quantize`` giving
the output layer int8 weights (PyTorch's dynamic quantization, deprecated too). ``deploy.py`` measures it beside
the ONNX translator that replaced it. It needs the model to be scriptable (the ``torch.jit.is_scripting()``
branches of the model code) and goes when they go.
"""

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

#: One hypothesis as ``Translator.translate`` returns it: target pieces, fairseq's score (the length-normalised
#: log-probability), and the attention, T x (S + 1) (target pieces x source pieces and the source's end of
#: sentence), or an empty tensor where the model has no attention (``--attention-type none``).
Hypothesis = Tuple[List[str], float, Tensor]


class Translator(nn.Module):
    """A scripted generator with the dictionaries: pieces in, pieces out.

    ``forward(sentences)``: a batch of sentences as lists of pieces (sentencepiece pieces, or the tokens the model
    was trained on) -> the best translation of each, as a list of target pieces, with the beam size it was
    exported with. ``translate(sentences, beam, nbest)``: the ``nbest`` best hypotheses of each with a beam of
    ``beam`` (see ``Hypothesis``). Pieces outside the source dictionary become ``<unk>``; the batch is
    left-padded as fairseq's translation task pads it.
    """

    def __init__(self, generator: nn.Module, src_dict, tgt_dict, max_source_positions: int) -> None:
        super().__init__()
        self.generator = generator
        self.source_index: Dict[str, int] = {symbol: i for i, symbol in enumerate(src_dict.symbols)}
        self.target_symbols: List[str] = list(tgt_dict.symbols)
        self.pad, self.eos, self.unk = src_dict.pad(), src_dict.eos(), src_dict.unk()
        self.strip: List[int] = sorted(int(s) for s in generator.symbols_to_strip_from_output)
        self.max_source_positions = max_source_positions
        self.default_beam: int = int(generator.beam_size)

    def encode(self, sentences: List[List[str]]) -> Dict[str, Tensor]:
        """The generator's ``net_input``: left-padded B x S token ids (each sentence ending in EOS), B lengths."""
        lengths = [len(pieces) + 1 for pieces in sentences]
        width = max(lengths)
        if width > self.max_source_positions:
            raise ValueError(f"a sentence of {width} tokens (with end of sentence) is longer than the model's "
                             f"{self.max_source_positions} source positions: split it")
        tokens = torch.full((len(sentences), width), self.pad, dtype=torch.long)
        for row, pieces in enumerate(sentences):
            ids = [self.source_index.get(piece, self.unk) for piece in pieces] + [self.eos]
            tokens[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        return {"src_tokens": tokens, "src_lengths": torch.tensor(lengths, dtype=torch.long)}

    def forward(self, sentences: List[List[str]]) -> List[List[str]]:
        out: List[List[str]] = []
        for hypotheses in self.translate(sentences, self.default_beam, 1):
            out.append(hypotheses[0][0])
        return out

    @torch.jit.export
    def translate(self, sentences: List[List[str]], beam: int, nbest: int) -> List[List[Hypothesis]]:
        """The ``nbest`` (at most ``beam``) best hypotheses of each sentence, best first, searched with a beam of
        ``beam`` (at most the target vocabulary size - 1)."""
        if len(sentences) == 0:
            return []
        self.generator.beam_size = max(1, min(beam, self.generator.vocab_size - 1))
        net_input = self.encode(sentences)
        width = net_input["src_tokens"].size(1)
        out: List[List[Hypothesis]] = []
        for row, hypotheses in enumerate(self.generator.forward({"net_input": net_input})):
            source_length = len(sentences[row]) + 1  # with the end of sentence; left-padded to width
            found: List[Hypothesis] = []
            for hypothesis in hypotheses[: max(1, nbest)]:
                ids: List[int] = hypothesis["tokens"].tolist()
                kept: List[int] = []
                pieces: List[str] = []
                for position, i in enumerate(ids):
                    if i not in self.strip:
                        kept.append(position)
                        pieces.append(self.target_symbols[i])
                attention = hypothesis["attention"]
                if attention.numel() > 0:  # S x T (padded source x target positions) -> kept T x real S
                    attention = attention[width - source_length:, :].t()
                    attention = attention.index_select(0, torch.tensor(kept, dtype=torch.long)).float()
                found.append((pieces, float(hypothesis["score"]), attention))
            out.append(found)
        return out


def build_generator(models: Sequence[nn.Module], task, options: Dict[str, object]) -> nn.Module:
    """fairseq's ``SequenceGenerator`` for ``models``, as ``task.build_generator`` makes it for
    ``fairseq-interactive`` with these generation options (fairseq's ``GenerationConfig`` fields)."""
    from fairseq.dataclass.configs import GenerationConfig

    config = GenerationConfig(**options)
    return task.build_generator(models, config)


def quantize_output_layer(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose decoder output layer (the deep output and the vocabulary projection, most of the
    weights a decoder step reads) has int8 weights, with PyTorch's dynamic quantization: at a few rows per step
    (one sentence, a small beam) the step is bound by reading weights, so it runs several times faster; the
    results differ from float32 by the rounding of those weights."""
    from torch.ao.quantization import quantize_dynamic

    names = {name for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and name in ("decoder.deep_output", "decoder.output_projection")}
    return quantize_dynamic(model, names, dtype=torch.qint8)


def script(models: Sequence[nn.Module], task, options: Dict[str, object],
           quantize: bool = False) -> torch.jit.ScriptModule:
    """The ``Translator`` of ``models`` with these generation options, scripted (``quantize``: see
    ``quantize_output_layer``)."""
    if quantize:
        models = [quantize_output_layer(model) for model in models]
    generator = build_generator(models, task, options)
    max_source = min(int(model.encoder.max_positions()) for model in models)
    return torch.jit.script(Translator(generator, task.source_dictionary, task.target_dictionary, max_source))
