"""Reduced precision as fairseq's ``--bf16`` and ``--fp16`` run it: the whole model converted (``.bfloat16()``,
``.half()``), not autocast (``--autocast-bf16`` is tested in test_autocast.py).

On CPU: the converted model trains a step (every parameter gets a gradient of its own dtype), decodes
incrementally exactly as its full forward does, runs beam search, keeps exactly zero attention on padding, and
stays close to the float32 model; and ``fairseq-train --cpu --bf16`` / ``--fp16`` learn and save checkpoints that
``fairseq-generate`` uses (compat.py's ``bf16_without_tpu`` and ``fp16_on_cpu`` make fairseq run them on CPU).
The GPU paths are in test_gpu.py.
"""

import pytest
import torch
from fairseq.sequence_generator import SequenceGenerator

from helpers import IDS, TRAIN, USER_DIR, VARIANTS, batch, build_model, corpus, run, valid_losses


DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def tolerance(dtype: torch.dtype, scale: float) -> float:
    """Eight units in the last place of ``dtype`` at ``scale``: the rounding of the inputs, weights and every
    intermediate is a few ulps, and a wrong equation (or a float32 path gone missing) is far larger."""
    return 8 * torch.finfo(dtype).eps * scale


@pytest.mark.parametrize("overrides", VARIANTS, ids=IDS)
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_converted_model_decodes_incrementally_keeps_padding_and_stays_close_to_float32(dtype, overrides):
    dtype = DTYPES[dtype]
    reference_model = build_model(**overrides)
    model = build_model(**overrides).to(dtype)
    _, src, lengths, prev = batch(model)
    with torch.no_grad():
        expected, _ = reference_model(src, lengths, prev)
        full, extra = model(src, lengths, prev)
        encoder_out = model.encoder(src, lengths)
        state = {}
        steps = [model.decoder(prev[:, : t + 1], encoder_out, incremental_state=state) for t in range(prev.size(1))]
    assert full.dtype == dtype
    # incremental decoding computes exactly what the full forward does, in any precision
    torch.testing.assert_close(torch.cat([logits for logits, _ in steps], dim=1), full, atol=0, rtol=0)
    attn = extra["attn"][0]
    if attn is not None:
        pad = src.eq(model.encoder.dictionary.pad()).unsqueeze(1).expand_as(attn)
        assert torch.all(attn.masked_select(pad) == 0)
        torch.testing.assert_close(attn.float().sum(-1), torch.ones(attn.shape[:2]), atol=tolerance(dtype, 4), rtol=0)
    atol = tolerance(dtype, expected.abs().max().item())
    torch.testing.assert_close(full.float(), expected, atol=atol, rtol=0)


@pytest.mark.parametrize("attention_type,layer_norm", [("additive", False), ("dot", False), ("general", False),
                                                       ("additive", True)],
                         ids=["additive", "dot", "general", "additive,layer_norm"])
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_converted_model_trains_a_step_with_gradients_close_to_float32(dtype, attention_type, layer_norm):
    dtype = DTYPES[dtype]
    grads = {}
    for name, convert in (("float32", torch.float32), ("low", dtype)):
        model = build_model(attention_type=attention_type, layer_norm=layer_norm, dropout=0.0).to(convert).train()
        _, src, lengths, prev = batch(model)
        logits, _ = model(src, lengths, prev)
        target = prev.roll(-1, dims=1)
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), target.flatten())
        loss.backward()
        assert all(p.grad is not None and p.grad.dtype == convert for p in model.parameters())
        grads[name] = {n: p.grad.float() for n, p in model.named_parameters()}
        if name == "low":  # an optimizer step in the model's dtype changes the weights
            before = {n: p.detach().clone() for n, p in model.named_parameters()}
            torch.optim.SGD(model.parameters(), lr=0.5).step()
            assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())
    low, full = torch.cat([g.flatten() for g in grads["low"].values()]), \
        torch.cat([g.flatten() for g in grads["float32"].values()])
    assert (low - full).norm() <= 0.05 * full.norm(), "gradients more than 5% away from float32's"


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_converted_model_runs_beam_search_like_float32(dtype):
    dtype = DTYPES[dtype]
    reference_model = build_model()
    model = build_model().to(dtype)
    _, src, lengths, _ = batch(model)
    sample = {"net_input": {"src_tokens": src, "src_lengths": lengths}}
    with torch.no_grad():
        low = SequenceGenerator([model], model.decoder.dictionary, beam_size=5, max_len_b=8).forward(sample)
        full = SequenceGenerator([reference_model], model.decoder.dictionary, beam_size=5, max_len_b=8).forward(sample)
    assert [len(h) for h in low] == [5] * src.size(0)
    for low_hyps, full_hyps in zip(low, full):
        assert all(h["score"].isfinite() for h in low_hyps)
        # an untrained model's scores are nearly tied, so the ranking may differ: compare the best score only
        assert abs(low_hyps[0]["score"].item() - full_hyps[0]["score"].item()) < 0.05


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return corpus(tmp_path_factory.mktemp("precision"), train=600, valid=60, test=30, seed=4)


@pytest.mark.parametrize("flag", ["--bf16", "--fp16"])
def test_fairseq_train_with_whole_model_precision_on_cpu_learns_and_generates(data, tmp_path, flag):
    out = run("fairseq-train", str(data / "bin"), "--user-dir", USER_DIR, "--arch", "bahdanau_gru_tiny",
              "--max-epoch", "3", "--save-dir", str(tmp_path), flag, *TRAIN).stdout
    losses = valid_losses(out)
    assert len(losses) == 3 and losses[-1] < losses[0] - 0.3, losses
    state = torch.load(tmp_path / "checkpoint_last.pt", map_location="cpu")
    assert {v.dtype for v in state["model"].values()} == {torch.float32}  # fairseq saves float32 copies
    generated = run("fairseq-generate", str(data / "bin"), "--user-dir", USER_DIR, "--path",
                    str(tmp_path / "checkpoint_last.pt"), "--beam", "5", "--cpu", flag, "--batch-size", "16").stdout
    assert generated.count("\nH-") == 30
