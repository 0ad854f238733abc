"""Registration, architecture defaults, flag overrides and bad flag values."""

import os
import subprocess
import sys

import pytest
from fairseq import options
from fairseq.models import ARCH_MODEL_REGISTRY

from helpers import USER_DIR, build_model


def python(code: str) -> str:
    """The last line ``code`` prints in a fresh interpreter that finds the package as installed."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=os.path.dirname(USER_DIR))
    return proc.stdout.strip().splitlines()[-1]


def test_tools_import_no_fairseq():
    """A deployment (``serve``) and the analysis tools import nothing of fairseq, and register nothing, even where
    fairseq is installed."""
    tools = ["deploy.serve", "model.export", "analysis.length_analysis", "analysis.synthetic",
             "analysis.plot_attention"]
    code = (f"import sys; import {', '.join('fairseq_bahdanau.' + tool for tool in tools)}; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'fairseq'))")
    assert python(code) == "[]"


def test_the_deployment_side_imports_nothing_of_the_model_side():
    """``deploy`` (the filter, the service, the runtime) imports neither torch nor ``fairseq_bahdanau.model``."""
    code = ("import sys; import fairseq_bahdanau.deploy.serve, fairseq_bahdanau.deploy.service; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch' or m.startswith('fairseq_bahdanau.m')))")
    assert python(code) == "[]"


def test_register_after_a_tool_import_and_on_fairseq_user_dir_load():
    code = ("import fairseq_bahdanau.deploy.serve, fairseq_bahdanau; fairseq_bahdanau.register(); "
            "from fairseq.models import ARCH_MODEL_REGISTRY; print(ARCH_MODEL_REGISTRY['bahdanau_gru_tiny'].__name__)")
    assert python(code) == "BahdanauGRUModel"
    code = ("from fairseq import utils; from argparse import Namespace; "
            f"utils.import_user_module(Namespace(user_dir={USER_DIR!r})); "
            "from fairseq.models import ARCH_MODEL_REGISTRY; print('bahdanau_gru' in ARCH_MODEL_REGISTRY)")
    assert python(code) == "True"


def test_importing_the_package_first_registers_once_fairseq_is_imported(pieces_model):
    """``import fairseq_bahdanau`` before fairseq imports neither fairseq nor torch, and registers the model once
    fairseq is imported: fairseq's checkpoint_utils then loads one of its checkpoints (KeyError '_name' before)."""
    checkpoint = pieces_model[2] / "checkpoint_best.pt"
    code = ("import sys, fairseq_bahdanau; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('fairseq', 'torch')))")
    assert python(code) == "[]"
    code = ("import sys, fairseq_bahdanau; from fairseq import checkpoint_utils; "
            f"models, _, _ = checkpoint_utils.load_model_ensemble_and_task([{str(checkpoint)!r}]); "
            "waiting = [f for f in sys.meta_path if type(f).__name__ == '_WaitForFairseq']; "
            "print(type(models[0]).__name__, waiting)")
    assert python(code) == "BahdanauGRUModel []"


def parse(*flags):
    parser = options.get_training_parser()
    return options.parse_args_and_arch(parser, ["data", "--task", "translation", *flags])


def test_architectures_are_registered():
    for arch in ("bahdanau_gru", "bahdanau_gru_rnnsearch", "bahdanau_gru_encdec", "bahdanau_gru_tiny"):
        assert ARCH_MODEL_REGISTRY[arch].__name__ == "BahdanauGRUModel"


def test_notebook_configuration_is_the_default():
    model = build_model("bahdanau_gru")
    assert model.encoder.embed_tokens.embedding_dim == 256
    assert model.encoder.gru.hidden_size == 512 and model.encoder.gru.bidirectional
    assert model.decoder.hidden_size == 512 and model.decoder.dropout_module.p == 0.5
    assert model.decoder.attention_type == "additive" and model.decoder.deep_output is None
    # the output projection reads [s_i; c_i; E y_{i-1}] = 512 + 1024 + 256
    assert model.decoder.output_projection.in_features == 512 + 1024 + 256


def test_rnnsearch_configuration():
    model = build_model("bahdanau_gru_rnnsearch")
    assert model.encoder.gru.hidden_size == 1000 and model.decoder.hidden_size == 1000
    assert model.decoder.embed_tokens.embedding_dim == 620
    assert model.decoder.output_activation == "maxout"
    assert model.decoder.deep_output.out_features == 2 * 500
    assert model.decoder.output_projection.in_features == 500


def test_encdec_configuration_is_the_notebook_model_without_attention():
    from fairseq_bahdanau.model.decoder import FixedContextGRUDecoder

    model = build_model("bahdanau_gru_encdec")
    reference = build_model("bahdanau_gru")
    assert isinstance(model.decoder, FixedContextGRUDecoder) and model.decoder.attention is None
    # the same parameters as the attention model but for the attention's own
    attention = {n for n, _ in reference.named_parameters() if n.startswith("decoder.attention.")}
    assert attention and {n: p.shape for n, p in model.named_parameters()} == \
        {n: p.shape for n, p in reference.named_parameters() if n not in attention}


def test_flags_override_architecture_defaults():
    args = parse("--arch", "bahdanau_gru_tiny", "--encoder-hidden-size", "48", "--attention-type", "general")
    assert args.encoder_hidden_size == 48
    assert args.decoder_hidden_size == 64  # the tiny default
    assert args.attention_type == "general"
    assert args.decoder_embed_dim == 32
    assert args.teacher_forcing_ratio == 1.0  # the dataclass default


def test_unknown_attention_type_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        parse("--arch", "bahdanau_gru_tiny", "--attention-type", "cosine")
    assert "--attention-type" in capsys.readouterr().err


@pytest.mark.parametrize(
    "overrides, flag",
    [
        ({"encoder_hidden_size": 0}, "--encoder-hidden-size"),
        ({"decoder_embed_dim": -4}, "--decoder-embed-dim"),
        ({"decoder_layers": 0}, "--decoder-layers"),
        ({"teacher_forcing_ratio": 1.5}, "--teacher-forcing-ratio"),
        ({"word_dropout": 1.0}, "--word-dropout"),
        ({"init_range": -0.1}, "--init-range"),
        ({"teacher_forcing_ratio": -0.1}, "--teacher-forcing-ratio"),
        ({"dropout": 1.0}, "--dropout"),
        ({"share_decoder_input_output_embed": True}, "--share-decoder-input-output-embed"),
        ({"attention_type": "dot", "decoder_hidden_size": 40}, "--attention-type dot"),
        ({"decoder_output_activation": "maxout"}, "--decoder-out-embed-dim"),
        ({"attention_type": "cosine"}, "--attention-type"),
        ({"share_all_embeddings": True, "decoder_out_embed_dim": 32, "encoder_embed_dim": 16},
         "--share-all-embeddings"),
        ({"share_all_embeddings": True, "decoder_out_embed_dim": 32}, "--joined-dictionary"),  # two dictionaries
    ],
)
def test_bad_values_fail_at_build_time_naming_the_flag(overrides, flag):
    with pytest.raises(ValueError, match=flag):
        build_model(**overrides)


@pytest.mark.parametrize("attention_type", ["dot", "general"])
def test_luong_without_deep_output_ties_when_the_hidden_size_is_the_embedding_size(attention_type):
    """Luong's output layer reads ~s_t (the decoder hidden size): with no deep output and hidden size = embedding
    size the projection can reuse the target embedding, and the flag check agrees with the decoder."""
    model = build_model(attention_type=attention_type, decoder_embed_dim=64, decoder_hidden_size=64,
                        decoder_out_embed_dim=0, share_decoder_input_output_embed=True)
    assert model.decoder.output_projection.weight is model.decoder.embed_tokens.weight
    with pytest.raises(ValueError, match="--share-decoder-input-output-embed"):  # additive reads [s; c; E y]
        build_model(decoder_embed_dim=64, decoder_hidden_size=64, decoder_out_embed_dim=0,
                    share_decoder_input_output_embed=True)


def test_share_all_embeddings_ties_source_target_and_output():
    import argparse

    import torch
    from fairseq.models import ARCH_CONFIG_REGISTRY

    from fairseq_bahdanau.model.bahdanau_gru import BahdanauGRUModel
    from helpers import DummyTask, batch, dictionary

    args = argparse.Namespace(share_all_embeddings=True, decoder_out_embed_dim=32, init_range=0.1)
    ARCH_CONFIG_REGISTRY["bahdanau_gru_tiny"](args)
    joined = dictionary(21)
    # fairseq's translation task loads the joined dictionary twice: two equal objects, accepted as one
    model = BahdanauGRUModel.build_model(args, DummyTask(joined, dictionary(21)))
    shared = model.decoder.embed_tokens.weight
    assert model.encoder.embed_tokens.weight is shared and model.decoder.output_projection.weight is shared
    assert model.state_dict()["encoder.embed_tokens.weight"].data_ptr() == shared.data_ptr()  # one matrix saved
    assert (shared[joined.pad()] == 0).all()  # --init-range leaves the padding row at zero
    _, src, lengths, prev = batch(model)
    model(src, lengths, prev)[0].logsumexp(-1).sum().backward()
    assert shared.grad is not None and shared.grad[joined.nspecial:].abs().sum() > 0
    # a saved model loads into a new one, tied as before
    torch.manual_seed(1)
    loaded = BahdanauGRUModel.build_model(args, DummyTask(joined, joined)).eval()
    loaded.load_state_dict(model.state_dict())
    assert loaded.encoder.embed_tokens.weight is loaded.decoder.output_projection.weight
    with torch.no_grad():
        torch.testing.assert_close(loaded(src, lengths, prev)[0], model.eval()(src, lengths, prev)[0], atol=0, rtol=0)


def test_share_all_embeddings_refuses_two_dictionaries_of_one_size():
    import argparse

    from fairseq.data import Dictionary
    from fairseq.models import ARCH_CONFIG_REGISTRY

    from fairseq_bahdanau.model.bahdanau_gru import BahdanauGRUModel
    from helpers import DummyTask, dictionary

    other = Dictionary()
    for i in range(21):
        other.add_symbol(f"v{i}")
    other.finalize(padding_factor=1)
    args = argparse.Namespace(share_all_embeddings=True, decoder_out_embed_dim=32)
    ARCH_CONFIG_REGISTRY["bahdanau_gru_tiny"](args)
    assert len(other) == len(dictionary(21))
    with pytest.raises(ValueError, match="--joined-dictionary"):
        BahdanauGRUModel.build_model(args, DummyTask(dictionary(21), other))


def test_loading_upgrades_the_state_dict_once(monkeypatch):
    model = build_model()
    calls = []
    upgrade = type(model).upgrade_state_dict
    monkeypatch.setattr(type(model), "upgrade_state_dict", lambda self, sd: calls.append(1) or upgrade(self, sd))
    model.load_state_dict(build_model().state_dict())
    assert len(calls) == 1
