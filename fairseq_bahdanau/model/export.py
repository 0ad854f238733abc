"""Export a trained model as an ONNX translator: a folder that translates with ONNX Runtime, numpy and
sentencepiece alone (no torch, no fairseq).

    python -m fairseq_bahdanau.model.export --path checkpoint_best.pt --data data-bin [--spm spm.model] \\
        --output translator.onnx [--quantize] [--source-lang de --target-lang en] [--beam 5 --lenpen 1 ...]

The folder ``translator.onnx/`` holds, for each model of the ensemble (``--path a.pt:b.pt``), its encoder and its
decoder step as ONNX graphs (``graphs.py``), the
dictionaries and the generation options in ``translator.json``, and the sentencepiece model
(``sentencepiece.model``). ``python -m fairseq_bahdanau.deploy.serve translator.onnx`` translates with it (also from a
zip archive of the folder's files); the search is fairseq's, in numpy (``deploy/search.py``), so that in float32
the translations are what ``fairseq-interactive --bpe sentencepiece --sentencepiece-model spm.model`` prints on
its ``D-`` lines for the same checkpoints and options.

``--quantize``: int8 weights for every matrix the graphs read (``onnxruntime.quantization.quantize_dynamic``:
int8 weights, activations quantized per call); faster, and no longer exactly fairseq's translations.

Needs ``pip install 'fairseq_bahdanau[export]'`` (onnx, onnxscript, onnxruntime) beside torch and fairseq.
"""

import argparse
import json
import logging
import os
import shutil
import tempfile
import warnings
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from .encoder_out import ANNOTATIONS, DECODER_INIT, PADDING_MASK, SUMMARY
from ..deploy.files import META_FILE, SPM_FILE, FORMAT

logger = logging.getLogger(__name__)

#: the generation options the command passes on (fairseq's flag names; defaults are fairseq-interactive's)
OPTIONS = {
    "beam": int, "max_len_a": float, "max_len_b": int, "min_len": int, "lenpen": float, "unkpen": float,
    "no_repeat_ngram_size": int, "temperature": float,
}


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


def _export_graph(module: nn.Module, args, names_in: List[str], names_out: List[str],
                  dynamic: Dict[str, Dict[int, str]], path: str, varargs: Optional[int] = None, table=None) -> None:
    """``torch.onnx.export`` (the ``torch.export``-based exporter) of ``module`` on ``args`` to ``path``, every axis
    named in ``dynamic`` left free; ``varargs``: the position from which ``module.forward`` takes ``*args``;
    ``table``: ONNX translations of custom operators."""
    dims: Dict[str, torch.export.Dim] = {}

    def dim(name: str) -> "torch.export.Dim":
        if name not in dims:
            dims[name] = torch.export.Dim(name, min=1, max=1 << 16)
        return dims[name]

    for name in ("torch.onnx", "onnx_ir", "onnxscript"):  # the exporter's progress reports
        logging.getLogger(name).setLevel(logging.WARNING)
    shapes = tuple({axis: dim(name) for axis, name in dynamic.get(arg, {}).items()} or None for arg in names_in)
    if varargs is not None:
        shapes = (*shapes[:varargs], shapes[varargs:])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*axis name.*will not be used.*")
        program = torch.onnx.export(module, tuple(args), dynamo=True, dynamic_shapes=shapes, input_names=names_in,
                                    output_names=names_out, custom_translation_table=table, verbose=False,
                                    optimize=True)
    program.save(path)


def export_model(model: nn.Module, folder: str, prefix: str, quantize: bool) -> Dict[str, object]:
    """Write ``model``'s graphs into ``folder``: its encoder (``PREFIX.encoder.onnx``; or, with layer
    normalisation or ``quantize``, ``PREFIX.encoderL.input.onnx`` and ``PREFIX.encoderL.step.onnx`` for each layer
    L and ``PREFIX.encoder.output.onnx``) and its decoder step (``PREFIX.step.onnx``); returns what the runtime
    needs to know of them (see ``graphs.py``)."""
    from . import graphs

    problem = graphs.unsupported(model)
    if problem:
        raise ValueError(problem)
    kind = graphs.family(model)
    model = graphs.split_inputs(model)
    step_graph = graphs.StepGraph(model).eval()
    encoder = model.encoder
    hidden_enc, layers_enc = encoder.hidden_size, encoder.gru.num_layers

    # example inputs: B = 2 sentences of S = 5 positions, N = 6 hypotheses (distinct sizes keep the axes apart)
    dictionary = model.encoder.dictionary
    first = dictionary.nspecial
    src = torch.full((2, 5), dictionary.pad(), dtype=torch.long)
    src[0] = torch.tensor([first, first + 1, first, first + 1, dictionary.eos()])
    src[1, :3] = torch.tensor([first + 1, first, dictionary.eos()])
    lengths = torch.tensor([5, 3])
    source_names = graphs.SOURCE_OUTPUTS[kind]
    if encoder.norms is None and not quantize:  # one graph, the GRU as ONNX's operator
        files: Dict[str, object] = {"encoder": f"{prefix}.encoder.onnx", "step": f"{prefix}.step.onnx"}
        table = {torch.ops.fairseq_bahdanau.bigru.default: graphs.bigru_onnx(hidden_enc)}
        _export_graph(graphs.EncoderGraph(model).eval(), (src, lengths), ["src_tokens", "src_lengths"],
                      ["decoder_init"] + source_names, {"src_tokens": {0: "B", 1: "S"}, "src_lengths": {0: "B"}},
                      os.path.join(folder, str(files["encoder"])), table=table)
    else:  # the layers step by step (layer normalisation; int8 recurrent matrices), then the outputs
        files = {"encoder_layers": [], "encoder_output": f"{prefix}.encoder.output.onnx",
                 "step": f"{prefix}.step.onnx"}
        for layer in range(layers_enc):
            names = {"input": f"{prefix}.encoder{layer}.input.onnx", "step": f"{prefix}.encoder{layer}.step.onnx"}
            files["encoder_layers"].append(names)
            example = src if layer == 0 else torch.zeros(5, 2, 2 * hidden_enc)
            _export_graph(graphs.EncoderInputGraph(model, layer).eval(), (example,), ["x"], ["gates"],
                          {"x": {0: "B", 1: "S"} if layer == 0 else {0: "S", 1: "B"}},
                          os.path.join(folder, names["input"]))
            _export_graph(graphs.EncoderStepGraph(model, layer).eval(),
                          (torch.zeros(2, 2, hidden_enc), torch.zeros(2, 2, 3 * hidden_enc)), ["hidden", "gates"],
                          ["hidden_out"], {"hidden": {1: "B"}, "gates": {1: "B"}},
                          os.path.join(folder, names["step"]))
        _export_graph(graphs.EncoderOutputGraph(model).eval(),
                      (torch.zeros(5, 2, encoder.output_dim), torch.zeros(2, encoder.output_dim), lengths),
                      ["annotations", "top", "src_lengths"], ["decoder_init"] + source_names,
                      {"annotations": {0: "S", 1: "B"}, "top": {0: "B"}, "src_lengths": {0: "B"}},
                      os.path.join(folder, str(files["encoder_output"])))

    # the step's example source side, of the shapes the encoder graph gives (values do not matter to the export)
    decoder = model.decoder
    layers, hidden = decoder.num_layers, decoder.hidden_size
    rows = 6
    inputs = [torch.full((rows,), dictionary.eos(), dtype=torch.long), torch.zeros(rows, layers, hidden)]
    dynamic: Dict[str, Dict[int, str]] = {"prev_tokens": {0: "N"}, "hidden": {0: "N"}}
    if kind == "luong":
        inputs.append(torch.zeros(rows, hidden))
        dynamic["feed"] = {0: "N"}
    annotations = torch.zeros(2, 5, model.encoder.output_dim)
    mask = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    encoder_out_dict = {ANNOTATIONS: [annotations.transpose(0, 1)], PADDING_MASK: [mask],
                        DECODER_INIT: [torch.zeros(2, layers, hidden)],
                        SUMMARY: [torch.zeros(2, model.encoder.output_dim)]}
    with torch.no_grad():
        example = decoder._new_source(encoder_out_dict, incremental=False)
    if kind == "none":
        inputs += [example.context.repeat_interleave(3, 0), example.gates.repeat_interleave(3, 0)]
        dynamic.update(context={0: "N"}, gates={0: "N"})
    else:
        inputs += [example.keys, example.values, example.mask_bias]
        dynamic.update(keys={0: "B", 1: "S"}, values={0: "B", 1: "S"}, mask_bias={0: "B", 1: "S"})
    inputs.append(torch.ones(1))
    names_in, names_out = graphs.step_io(kind)
    _export_graph(step_graph, inputs, names_in, names_out, dynamic,
                  os.path.join(folder, files["step"]), varargs=2)
    if quantize:
        for name in [files["encoder_output"], files["step"]] + [
                n for names in files["encoder_layers"] for n in names.values()]:  # (quantize: the stepped form)
            quantize_graph(os.path.join(folder, str(name)))
    return {"files": files, "family": kind, "layers": layers, "hidden_size": hidden,
            "encoder_hidden_size": hidden_enc,
            "source_outputs": source_names, "step_inputs": names_in, "step_outputs": names_out,
            "attention": kind != "none"}


def quantize_graph(path: str) -> None:
    """``path``'s graph with int8 weights for every matrix product with a constant matrix and every embedding
    look-up (ONNX Runtime's dynamic quantization), in place."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantized = path + ".int8"
    quantize_dynamic(path, quantized, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm", "Gather"])
    os.replace(quantized, path)


def export(paths: Sequence[str], data: str, output: str, spm: Optional[str] = None,
           source_lang: Optional[str] = None, target_lang: Optional[str] = None,
           options: Optional[Dict[str, object]] = None, quantize: bool = False) -> None:
    """Write the ONNX translator of the checkpoints ``paths`` to the folder ``output`` (see the module
    docstring)."""
    models, task = load(paths, data, source_lang, target_lang)
    write_translator(models, task.source_dictionary, task.target_dictionary, output, spm, options, quantize,
                     {"checkpoints": [os.path.abspath(p) for p in paths], "source_lang": task.cfg.source_lang,
                      "target_lang": task.cfg.target_lang})


def write_translator(models: Sequence[nn.Module], src_dict, tgt_dict, output: str, spm: Optional[str] = None,
                     options: Optional[Dict[str, object]] = None, quantize: bool = False,
                     about: Optional[Dict[str, object]] = None) -> None:
    """Write the translator of ``models`` (an ensemble, in eval mode) with these dictionaries to the folder
    ``output``; ``about``: more entries for ``translator.json`` (the checkpoints, the languages). The folder
    appears whole or not at all: it is written beside ``output`` and then renamed (an earlier translator there
    is replaced)."""
    parent = os.path.dirname(os.path.abspath(output))
    os.makedirs(parent, exist_ok=True)
    if os.path.exists(output) and not (os.path.isdir(output) and os.path.isfile(os.path.join(output, META_FILE))):
        raise ValueError(f"{output} exists and is not a translator folder: remove it or choose another --output")
    work = tempfile.mkdtemp(prefix=os.path.basename(output) + ".", suffix=".tmp", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(work, 0o777 & ~umask)  # a folder like any other (mkdtemp makes it private)
    try:
        described = [export_model(model, work, f"model{i}", quantize) for i, model in enumerate(models)]
        meta = {
            "format": FORMAT,
            **(about or {}),
            "generation": dict(options or {}),
            "quantized": quantize,
            "sentencepiece": spm is not None,
            "attention": all(m["attention"] for m in described),
            "models": described,
            "source_symbols": list(src_dict.symbols),
            "target_symbols": list(tgt_dict.symbols),
            "source_special": {"pad": src_dict.pad(), "eos": src_dict.eos(), "unk": src_dict.unk()},
            "target_special": {"pad": tgt_dict.pad(), "eos": tgt_dict.eos(), "unk": tgt_dict.unk()},
            # fairseq-interactive strips the end of sentence (its generator's symbols_to_strip_from_output)
            "strip": [tgt_dict.eos()],
            "max_source_positions": min(int(model.encoder.max_positions()) for model in models),
            "max_decoder_positions": min(int(model.decoder.max_positions()) for model in models),
        }
        with open(os.path.join(work, META_FILE), "w", encoding="utf-8") as f:
            json.dump(meta, f, ensure_ascii=False)
        if spm is not None:
            shutil.copyfile(spm, os.path.join(work, SPM_FILE))
        if os.path.isdir(output):
            old = output + ".old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(output, old)
            os.replace(work, output)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(work, output)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", required=True, help="checkpoint(s), colon-separated for an ensemble")
    parser.add_argument("--data", required=True, help="the data directory the model was trained on (its dict.*.txt)")
    parser.add_argument("--output", required=True, help="the translator folder to write (e.g. translator.onnx)")
    parser.add_argument("--spm", help="the sentencepiece model the data was segmented with (omit for data that was "
                                      "not: the translator then reads and writes space-separated tokens)")
    parser.add_argument("--quantize", action="store_true",
                        help="int8 weights for every matrix the graphs read: several times faster on CPUs; "
                             "translations may differ slightly from the float32 model's")
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
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            parser.exit(1, f"error: the ONNX export needs {name}: pip install 'fairseq_bahdanau[export]'\n")
    try:
        export(args.path.split(":"), args.data, args.output, args.spm, args.source_lang, args.target_lang,
               options, args.quantize)
    except ValueError as problem:
        parser.exit(1, f"error: {problem}\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
