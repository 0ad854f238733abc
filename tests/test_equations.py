"""The fast model against the equations written plainly (tests/reference.py) on the same weights: values and
gradients (so the hand-written backwards of deferred.py are exact), and the benchmark's naive baseline."""

import os

import pytest
import torch

from helpers import ATTENTION_TYPES, IDS, VARIANTS, batch, build_model
import reference


@pytest.mark.parametrize("overrides", VARIANTS, ids=IDS)
def test_reference_equations_agree_with_the_fast_model(overrides):
    model = build_model(**overrides)
    sentences, src, lengths, prev = batch(model, lengths=(6, 3, 4))
    with torch.no_grad():
        logits, extra = model(src, lengths, prev)
        pad = model.encoder.dictionary.pad()
        for b, sentence in enumerate(sentences):
            ref_logits, ref_attn = reference.decode(model, sentence, prev[b].tolist())
            torch.testing.assert_close(logits[b], ref_logits, atol=1e-5, rtol=1e-5)
            if ref_attn is None:
                assert extra["attn"] == [None]
            else:
                torch.testing.assert_close(extra["attn"][0][b][:, src[b] != pad], ref_attn, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("overrides", VARIANTS, ids=IDS)
def test_gradients_agree_with_the_reference(overrides):
    """Every parameter's gradient, through the fast model's deferred per-step gradients (deferred.py), equals plain
    autograd through the reference equations; and a second backward over the same graph adds the same again."""
    model = build_model(**overrides)
    sentences, src, lengths, prev = batch(model, lengths=(6, 3, 4))
    probe = torch.randn(len(sentences), prev.size(1), len(model.decoder.dictionary),
                        generator=torch.Generator().manual_seed(3))
    loss = (model(src, lengths, prev)[0] * probe).sum()
    loss.backward(retain_graph=True)
    fast = {name: p.grad.clone() for name, p in model.named_parameters()}
    loss.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, 2 * fast[name], atol=1e-5, rtol=1e-4, msg=f"second backward: {name}")
    model.zero_grad()
    ref_loss = sum((reference.decode(model, s, prev[b].tolist())[0] * probe[b]).sum() for b, s in enumerate(sentences))
    ref_loss.backward()
    for name, p in model.named_parameters():
        ref = p.grad if p.grad is not None else torch.zeros_like(p)
        torch.testing.assert_close(fast[name], ref, atol=1e-5, rtol=1e-4, msg=f"gradient of {name}")


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_partial_backward_leaves_no_stale_deferred_gradients(attention_type):
    """A backward that asks only for some inputs' gradients (autograd.grad, retain_graph) goes through the step
    loop without forming the deferred gradients; a full backward afterwards must not count those steps twice."""
    model = build_model(attention_type=attention_type)
    _, src, lengths, prev = batch(model)
    model(src, lengths, prev)[0].logsumexp(-1).sum().backward()
    want = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    loss = model(src, lengths, prev)[0].logsumexp(-1).sum()
    torch.autograd.grad(loss, [model.decoder.embed_tokens.weight], retain_graph=True)
    loss.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want[name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_every_parameter_gets_a_gradient(attention_type):
    for ratio in (1.0, 0.5):
        model = build_model(attention_type=attention_type, decoder_layers=2, teacher_forcing_ratio=ratio).train()
        _, src, lengths, prev = batch(model)
        logits, _ = model(src, lengths, prev)
        logits.logsumexp(-1).sum().backward()
        unused = [name for name, p in model.named_parameters() if p.grad is None]
        assert not unused, f"parameters without gradient (ratio {ratio}): {unused}"


@pytest.mark.parametrize("layer_norm", [False, True], ids=["plain", "layer_norm"])
def test_init_range_draws_every_parameter_but_the_embeddings(layer_norm):
    default = build_model(layer_norm=layer_norm, decoder_layers=2, random_norms=False)
    uniform = build_model(init_range=0.3, layer_norm=layer_norm, decoder_layers=2, random_norms=False)
    for (name, p), (_, q) in zip(default.named_parameters(), uniform.named_parameters()):
        if "embed_tokens" in name or "norms." in name:  # built identically, then left alone
            torch.testing.assert_close(p, q, atol=0, rtol=0)
            if "norms." in name:  # layer norms: gain 1, bias 0
                assert (q == (1.0 if name.endswith("weight") else 0.0)).all(), name
        else:
            assert q.abs().max() <= 0.3 and q.abs().max() > 0.2, name  # 0.3 > any default bound here
    assert (uniform.decoder.embed_tokens.weight[uniform.decoder.dictionary.pad()] == 0).all()


def test_tutorial_formulation_agrees_with_the_fast_model():
    """The benchmark's naive baseline (examples/benchmark/naive.py) computes the same function as the fast model."""
    import importlib.util

    from helpers import ROOT

    spec = importlib.util.spec_from_file_location("naive", os.path.join(ROOT, "examples", "benchmark", "naive.py"))
    naive_baseline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(naive_baseline)
    model = build_model("bahdanau_gru", encoder_hidden_size=24, decoder_hidden_size=20, encoder_embed_dim=12,
                        decoder_embed_dim=10)
    _, src, lengths, prev = batch(model)
    with torch.no_grad():
        fast, _ = model(src, lengths, prev)
        naive = naive_baseline.tutorial_forward(model, src, lengths, prev)
    torch.testing.assert_close(naive, fast, atol=1e-5, rtol=1e-5)
