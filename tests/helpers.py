"""Shared test helpers: tiny dictionaries and models, padded batches, and fairseq command-line runs."""

import argparse
import json
import os
import shutil
import subprocess
import sys
from typing import List, Sequence

import torch
from fairseq.data import Dictionary
from fairseq.models import ARCH_CONFIG_REGISTRY

from fairseq_bahdanau.model.bahdanau_gru import BahdanauGRUModel  # (registers the model and its architectures)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USER_DIR = os.path.join(ROOT, "fairseq_bahdanau")
BIN = os.path.dirname(sys.executable)


def dictionary(size: int = 20) -> Dictionary:
    d = Dictionary()
    for i in range(size):
        d.add_symbol(f"w{i}")
    d.finalize(padding_factor=1)
    return d


class DummyTask:
    def __init__(self, src_dict: Dictionary, tgt_dict: Dictionary) -> None:
        self.source_dictionary = src_dict
        self.target_dictionary = tgt_dict


def build_model(arch: str = "bahdanau_gru_tiny", seed: int = 0, random_norms: bool = True,
                **overrides) -> BahdanauGRUModel:
    """A model of ``arch`` with ``overrides`` (flag names with underscores), in eval mode. With ``--layer-norm``
    and ``random_norms`` the norms' gains and biases are drawn at random (they start at 1 and 0, where every norm
    is interchangeable with every other, so a test could not tell if one were used in another's place)."""
    torch.manual_seed(seed)
    args = argparse.Namespace(**overrides)
    ARCH_CONFIG_REGISTRY[arch](args)
    src, tgt = dictionary(23), dictionary(19)
    model = BahdanauGRUModel.build_model(args, DummyTask(src, tgt))
    if random_norms:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "norms." in name:
                    p.uniform_(0.5, 1.5) if name.endswith("weight") else p.uniform_(-0.5, 0.5)
    return model.eval()


def pad_batch(sentences: Sequence[Sequence[int]], pad: int, left: bool) -> torch.Tensor:
    """B x S batch of token lists, left- or right-padded."""
    width = max(len(s) for s in sentences)
    rows = []
    for s in sentences:
        padding = [pad] * (width - len(s))
        rows.append(padding + list(s) if left else list(s) + padding)
    return torch.tensor(rows, dtype=torch.long)


def random_sentences(dict_: Dictionary, lengths: Sequence[int], seed: int = 0) -> List[List[int]]:
    """Random sentences of real symbols, each ending in EOS."""
    g = torch.Generator().manual_seed(seed)
    first = dict_.nspecial
    return [torch.randint(first, len(dict_), (n - 1,), generator=g).tolist() + [dict_.eos()] for n in lengths]


#: fairseq-train flags shared by the tests that train the tiny model on the synthetic corpus
TRAIN = ["--optimizer", "adam", "--lr", "0.01", "--clip-norm", "1.0", "--max-tokens", "600", "--cpu",
         "--log-format", "simple", "--log-interval", "50", "--seed", "1", "--num-workers", "0"]


def preprocess(raw, dest, *extra: str) -> None:
    """fairseq-preprocess ``{raw}/{train,valid,test}.{src,tgt}`` (as written by ``synthetic.write_corpus``) into
    ``dest``."""
    run("fairseq-preprocess", "--source-lang", "src", "--target-lang", "tgt", "--trainpref", f"{raw}/train",
        "--validpref", f"{raw}/valid", "--testpref", f"{raw}/test", "--destdir", str(dest), "--workers", "1", *extra)


def corpus(root, train: int, valid: int, test: int, seed: int):
    """Write the synthetic corpus to ``root/raw`` and preprocess it into ``root/bin``; returns ``root``."""
    from fairseq_bahdanau.analysis.synthetic import write_corpus

    write_corpus(str(root / "raw"), train=train, valid=valid, test=test, seed=seed)
    preprocess(root / "raw", root / "bin")
    return root


def valid_losses(log: str) -> List[float]:
    """The validation losses a fairseq-train log reports, in order."""
    import re

    return [float(x) for x in re.findall(r"valid on 'valid' subset \| loss ([\d.]+)", log)]


def tool_env(**extra: str) -> dict:
    """The environment of the fairseq tools the tests start: one thread each, no Python warnings."""
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", **extra)


def tool_path(tool: str) -> str:
    """Console script ``tool``: beside this Python (a virtual environment), else on PATH (a ``pip install
    --target`` install, as examples/gpu/check.sh makes from a wheelhouse)."""
    beside = os.path.join(BIN, tool)
    return beside if os.path.exists(beside) else (shutil.which(tool) or beside)


def run(tool: str, *args: str, stdin: str = None, check: bool = True, cwd: str = None) -> subprocess.CompletedProcess:
    """Run a fairseq console script from this environment; stdout and stderr are captured as text."""
    proc = subprocess.run(
        [tool_path(tool), *args], input=stdin, capture_output=True, text=True, env=tool_env(), cwd=cwd
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{tool} {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


# ------------------------------------------------------------------ the unit tests' model variants and batches

#: every --attention-type that attends (``none`` is in VARIANTS)
ATTENTION_TYPES = ["additive", "dot", "general"]
#: the model variants the equations are checked on: every attention type, deeper stacks, no attention, every output
#: layer, layer normalisation (the first five: one of each family and a deeper stack)
VARIANTS = [
    {"attention_type": "additive"},
    {"attention_type": "dot"},
    {"attention_type": "general"},
    {"attention_type": "additive", "encoder_layers": 2, "decoder_layers": 2},
    {"attention_type": "none"},
    {"attention_type": "general", "decoder_layers": 2, "decoder_out_embed_dim": 16,
     "decoder_output_activation": "tanh"},
    {"attention_type": "additive", "decoder_out_embed_dim": 12, "decoder_output_activation": "maxout",
     "attention_dim": 24},
    {"attention_type": "additive", "decoder_out_embed_dim": 32, "share_decoder_input_output_embed": True},
    {"attention_type": "additive", "layer_norm": True},
    {"attention_type": "additive", "layer_norm": True, "encoder_layers": 2, "decoder_layers": 2},
    {"attention_type": "general", "layer_norm": True},
    {"attention_type": "none", "layer_norm": True},
]
#: test ids of VARIANTS
IDS = [",".join(f"{k}={v}" for k, v in variant.items()) for variant in VARIANTS]
#: the variants the costlier tests run on: one of each family, a deeper stack, and layer normalisation (the default
#: model's, whose full forward fuses the query where the incremental step does not, and a deeper stack)
CORE, CORE_IDS = VARIANTS[:5] + VARIANTS[8:10], IDS[:5] + IDS[8:10]


def batch(model, lengths=(7, 3, 5, 1 + 1), tgt_len=6, left=True, seed=0):
    """Random sentences of ``lengths`` (left- or right-padded B x S source, B lengths) and a B x tgt_len
    ``prev_output_tokens`` starting with EOS: (sentences, src, lengths, prev)."""
    src_dict, tgt_dict = model.encoder.dictionary, model.decoder.dictionary
    sentences = random_sentences(src_dict, lengths, seed)
    src = pad_batch(sentences, src_dict.pad(), left)
    g = torch.Generator().manual_seed(seed + 1)
    prev = torch.randint(tgt_dict.nspecial, len(tgt_dict), (len(lengths), tgt_len), generator=g)
    prev[:, 0] = tgt_dict.eos()
    return sentences, src, torch.tensor(lengths), prev


#: Hostile and malformed ``POST /translate`` bodies, the status the service answers each with, and a part of its
#: message (test_service.py asks the single-process service, test_ray.py its Ray Serve form and compares).
BAD_REQUESTS = [
    (b"{not json", 400, "not valid JSON"),
    (b'{"text": ["\xff\xfe"]}', 400, "not UTF-8"),
    (json.dumps({"text": ["a"] * 65}).encode(), 413, "at most 64"),
    (json.dumps({"text": "x" * (2 << 20)}).encode(), 413, "bytes"),
    (json.dumps({"text": ["a"], "model": "nope"}).encode(), 404, "unknown model 'nope'"),
    (json.dumps({"text": ["a"], "beam": 0}).encode(), 422, '"beam"'),
    (json.dumps({"text": ["a"], "beam": 17}).encode(), 422, '"beam"'),
    (json.dumps({"text": ["a"], "beam": 2, "nbest": 3}).encode(), 422, '"nbest"'),
    (json.dumps({"text": [1, 2]}).encode(), 422, "list of strings"),
    (json.dumps([1]).encode(), 422, "JSON object"),
    (json.dumps({"text": ["a"], "model": ["attention"]}).encode(), 422, '"model" must be the name'),
    (json.dumps({"text": ["a"], "model": {"a": 1}}).encode(), 422, '"model" must be the name'),
    (json.dumps({"text": ["a"], "model": ""}).encode(), 422, '"model" must be the name'),
    (json.dumps({"text": ["a"], "model": None}).encode(), 422, '"model" must be the name'),
    (json.dumps({"text": ["a"], "model": False}).encode(), 422, '"model" must be the name'),
    (b'{"text": ["a"], "x": ' + b"[" * 2000 + b"]" * 2000 + b"}", 400, "nested too deeply"),
    (b'{"text": ["a"], "beam": ' + b"9" * 5000 + b"}", 400, "not valid JSON"),
    (json.dumps({"text": ["w " * 300] * 64, "beam": 16}).encode(), 413, "units of work"),
    (json.dumps({"text": ["a", "w " * 200], "beam": 16}).encode(), 413, "line 2 asks for"),  # --max-line-work
]
BAD_REQUEST_IDS = ["json", "utf-8", "lines", "body", "model", "beam-0", "beam-17", "nbest", "text", "object",
                   "model-list", "model-dict", "model-empty", "model-null", "model-false", "nested", "digits", "work",
                   "line-work"]
