"""--autocast-bf16: the training forward under bfloat16 autocast on CPU (whole-model reduced precision, fairseq's
--bf16/--fp16, is in test_precision.py)."""

import pytest
import torch

from helpers import ATTENTION_TYPES, batch, build_model


@pytest.mark.parametrize("how", ["outer autocast", "--autocast-bf16"])
@pytest.mark.parametrize("attention_type,layer_norm", [(a, False) for a in ATTENTION_TYPES] + [("additive", True)],
                         ids=ATTENTION_TYPES + ["additive,layer_norm"])
def test_mixed_precision_training_step(attention_type, layer_norm, how):
    """Under autocast (fairseq's --amp, or the model's own --autocast-bf16; bfloat16 on CPU here) a training step
    runs in bfloat16 and its gradients stay close to the float32 ones; --autocast-bf16 leaves evaluation in
    float32, with the same logits as without the flag."""
    model = build_model(attention_type=attention_type, layer_norm=layer_norm, encoder_layers=2,
                        dropout=0.0).train()  # train mode, no dropout
    _, src, lengths, prev = batch(model)
    model(src, lengths, prev)[0].logsumexp(-1).sum().backward()
    full = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    if how == "outer autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(src, lengths, prev)[0]
    else:
        model.autocast_bf16 = True
        logits = model(src, lengths, prev)[0]
    assert logits.dtype == torch.bfloat16
    logits.float().logsumexp(-1).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad.dtype == torch.float32, name
        assert torch.isfinite(p.grad).all(), name
        scale = full[name].abs().max().clamp(min=1e-3)
        assert (p.grad - full[name]).abs().max() / scale < 0.1, name
    if how == "--autocast-bf16":
        model.eval()
        with torch.no_grad():
            evaluated = model(src, lengths, prev)[0]
            model.autocast_bf16 = False
            plain = model(src, lengths, prev)[0]
        assert evaluated.dtype == torch.float32
        torch.testing.assert_close(evaluated, plain, atol=0, rtol=0)


@pytest.mark.parametrize("lengths", [(7, 3, 5, 2), (4, 4, 4, 4)], ids=["padded", "unpadded"])
def test_autocast_bf16_runs_the_encoder_gru_in_bfloat16(lengths):
    """autocast leaves PyTorch's CPU GRU in float32; under --autocast-bf16 the encoder gives it bfloat16
    operands, on padded and unpadded batches alike, and the same annotations within bfloat16's precision."""
    from fairseq_bahdanau.model.precision import training_autocast

    model = build_model(encoder_layers=2, dropout=0.0).train()
    _, src, lengths, _ = batch(model, lengths=lengths)
    full = model.encoder(src, lengths)["encoder_out"][0]
    with training_autocast(True, src):
        half = model.encoder(src, lengths)["encoder_out"][0]
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), full, atol=0.05, rtol=0)
    half.float().sum().backward()
    assert all(p.grad.dtype == torch.float32 for p in model.encoder.gru.parameters())


def test_autocast_bf16_refuses_other_devices():
    from fairseq_bahdanau.model.precision import training_autocast

    with pytest.raises(ValueError, match="--autocast-bf16 is for training on CPUs.*--amp"):
        with training_autocast(True, torch.empty(0, device="meta")):
            pass


@pytest.fixture
def precision_module():
    """fairseq_bahdanau.model.precision with its warn-once and capability caches cleared before and after."""
    from fairseq_bahdanau.model import precision

    def clear():
        precision._warn_slow_bfloat16.cache_clear()
        precision.fast_bfloat16_cpu.cache_clear()

    clear()
    yield precision
    clear()


@pytest.mark.parametrize("fast", [True, False], ids=["fast-bf16-cpu", "slow-bf16-cpu"])
def test_autocast_bf16_warns_on_cpus_without_fast_bfloat16(fast, precision_module, monkeypatch, caplog):
    """On a CPU without fast bfloat16 matrix products (e.g. AVX2 alone) the flag warns, once, that it slows
    training down; on one with them it says nothing."""
    precision = precision_module
    monkeypatch.setattr(precision, "fast_bfloat16_cpu", lambda: fast)
    for _ in range(2):
        with caplog.at_level("WARNING", logger="fairseq_bahdanau.model.precision"):
            with precision.training_autocast(True, torch.empty(0)):
                pass
    warnings = [r.getMessage() for r in caplog.records if r.name == "fairseq_bahdanau.model.precision"]
    assert len(warnings) == (0 if fast else 1)
    assert all("no fast bfloat16" in w and "train without --autocast-bf16" in w for w in warnings)


@pytest.mark.parametrize("onednn", [True, False], ids=["onednn", "no-onednn"])
def test_onednn_bfloat16_asks_onednn_then_avx512_bf16(onednn, monkeypatch):
    """oneDNN's answer where torch has oneDNN; AVX512-BF16's where it has not (its query then fails)."""
    from fairseq_bahdanau.model import precision

    class NoOneDNN:
        def __getattr__(self, name):
            raise AttributeError(name)

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: "avx512-bf16", raising=False)
    if onednn:
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: "onednn")
    else:
        monkeypatch.setattr(torch.ops, "mkldnn", NoOneDNN())
    assert precision.onednn_bfloat16() is True  # bool() of the one it asked
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: "", raising=False)
    assert precision.onednn_bfloat16() is onednn


#: (oneDNN has bfloat16 kernels, measured bfloat16/float32 time, fast?) on the three CPUs seen so far
CPUS = {
    "zen4-avx512-bf16": (True, 0.5, True),
    "zen3-avx2-only": (False, None, False),  # no kernels: nothing is timed
    "xeon-avx512-without-bf16": (True, 2.6, False),  # oneDNN emulates bfloat16
}


@pytest.mark.parametrize("cpu", list(CPUS))
def test_fast_bfloat16_cpu_decides_by_kernels_and_measured_time(cpu, precision_module, monkeypatch):
    onednn, ratio, fast = CPUS[cpu]
    timed = []
    monkeypatch.setattr(precision_module, "onednn_bfloat16", lambda: onednn)
    monkeypatch.setattr(precision_module, "bfloat16_time_ratio", lambda: timed.append(1) or ratio)
    assert precision_module.fast_bfloat16_cpu() is fast
    assert precision_module.fast_bfloat16_cpu() is fast
    assert len(timed) == (1 if onednn else 0)  # measured once per process, and only where kernels exist


def test_bfloat16_time_ratio_is_a_positive_finite_ratio():
    from fairseq_bahdanau.model.precision import bfloat16_time_ratio

    ratio = bfloat16_time_ratio(rows=8, inner=16, cols=16, repeats=2)
    assert 0 < ratio < float("inf")
