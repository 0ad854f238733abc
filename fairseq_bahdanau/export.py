"""Export a trained model as one TorchScript file that translates without fairseq.

    python -m fairseq_bahdanau.export --path checkpoint_best.pt --data data-bin [--spm spm.model] \\
        --output translator.pt [--source-lang de --target-lang en] [--beam 5 --lenpen 1 ...]

The file holds fairseq's own ``SequenceGenerator`` scripted with the model (or an ensemble: ``--path a.pt:b.pt``)
inside a ``Translator`` that maps sentencepiece pieces to token ids and back with the training dictionaries, plus
the sentencepiece model itself; ``fairseq_bahdanau.serve`` loads it with torch and sentencepiece alone. The
generation options and their defaults are ``fairseq-interactive``'s, so that the translator writes what
``fairseq-interactive --bpe sentencepiece --sentencepiece-model spm.model`` writes on its ``D-`` lines (one
sentence at a time, as fairseq-interactive translates by default).

``--quantize`` gives the decoder's output layer int8 weights (see ``quantize_output_layer``): faster, no longer
exactly fairseq-interactive's output.

The model's inference path is TorchScript-compatible as it is (``torch.jit.script(model)`` works for every
attention type and output layer); the hand-written backwards of training are switched off in TorchScript.
"""

import argparse
import json
import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

#: names of the extra files in the exported archive (``torch.jit.save``'s ``_extra_files``)
META_FILE = "translator.json"
SPM_FILE = "sentencepiece.model"


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


def load(paths: Sequence[str], data: str, source_lang: Optional[str] = None, target_lang: Optional[str] = None):
    """The models of ``paths`` (in eval mode) and their task, with the dictionaries of ``data``."""
    from fairseq import checkpoint_utils

    from fairseq_bahdanau import register

    register()

    overrides: Dict[str, object] = {"data": data}
    if source_lang:
        overrides.update(source_lang=source_lang, target_lang=target_lang)
    models, _, task = checkpoint_utils.load_model_ensemble_and_task(list(paths), arg_overrides=overrides)
    for model in models:
        model.eval()
    return models, task


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


def export(paths: Sequence[str], data: str, output: str, spm: Optional[str] = None,
           source_lang: Optional[str] = None, target_lang: Optional[str] = None,
           options: Optional[Dict[str, object]] = None, quantize: bool = False) -> None:
    """Write the translator of the checkpoints ``paths`` to ``output`` (see the module docstring)."""
    options = dict(options or {})
    models, task = load(paths, data, source_lang, target_lang)
    translator = script(models, task, options, quantize)
    extra = {META_FILE: json.dumps({
        "checkpoints": [os.path.abspath(p) for p in paths],
        "source_lang": task.cfg.source_lang,
        "target_lang": task.cfg.target_lang,
        "generation": options,
        "quantized": quantize,
        "sentencepiece": spm is not None,
        "attention": all(model.decoder.attention is not None for model in models),
    })}
    if spm is not None:
        with open(spm, "rb") as f:
            extra[SPM_FILE] = f.read()
    tmp = output + ".tmp"
    torch.jit.save(translator, tmp, _extra_files=extra)
    os.replace(tmp, output)  # never a half-written translator under the output's name


#: the generation options the command passes on (fairseq's flag names; defaults are fairseq's)
OPTIONS = {
    "beam": int, "max_len_a": float, "max_len_b": int, "min_len": int, "lenpen": float, "unkpen": float,
    "no_repeat_ngram_size": int, "temperature": float,
}


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", required=True, help="checkpoint(s), colon-separated for an ensemble")
    parser.add_argument("--data", required=True, help="the data directory the model was trained on (its dict.*.txt)")
    parser.add_argument("--output", required=True, help="the translator file to write")
    parser.add_argument("--spm", help="the sentencepiece model the data was segmented with (omit for data that was "
                                      "not: the translator then reads and writes space-separated tokens)")
    parser.add_argument("--quantize", action="store_true",
                        help="int8 weights for the decoder's output layer: several times faster one sentence at a "
                             "time on CPUs; translations may differ slightly from the float32 model's")
    parser.add_argument("--source-lang")
    parser.add_argument("--target-lang")
    for name, kind in OPTIONS.items():
        parser.add_argument("--" + name.replace("_", "-"), type=kind, help="as in fairseq-interactive")
    args = parser.parse_args(argv)
    if bool(args.source_lang) != bool(args.target_lang):
        parser.error("give both --source-lang and --target-lang, or neither")
    for path in args.path.split(":") + ([args.spm] if args.spm else []):
        if not os.path.isfile(path):
            parser.error(f"no such file: {path}")
    options = {name: getattr(args, name) for name in OPTIONS if getattr(args, name) is not None}
    export(args.path.split(":"), args.data, args.output, args.spm, args.source_lang, args.target_lang, options,
           args.quantize)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
