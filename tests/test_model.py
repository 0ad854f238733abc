"""Unit tests of the model's equations and fairseq contracts, on tiny models with random weights."""

import pytest
import torch

from fairseq.sequence_generator import SequenceGenerator

from helpers import build_model, pad_batch, random_sentences
import reference

ATTENTION_TYPES = ["additive", "dot", "general"]
VARIANTS = [
    {"attention_type": "additive"},
    {"attention_type": "dot"},
    {"attention_type": "general"},
    {"attention_type": "additive", "encoder_layers": 2, "decoder_layers": 2},
    {"attention_type": "general", "decoder_layers": 2, "decoder_out_embed_dim": 16, "decoder_output_activation": "tanh"},
    {"attention_type": "additive", "decoder_out_embed_dim": 12, "decoder_output_activation": "maxout",
     "attention_dim": 24},
    {"attention_type": "additive", "decoder_out_embed_dim": 32, "share_decoder_input_output_embed": True},
]
IDS = [",".join(f"{k}={v}" for k, v in variant.items()) for variant in VARIANTS]


def batch(model, lengths=(7, 3, 5, 1 + 1), tgt_len=6, left=True, seed=0):
    src_dict, tgt_dict = model.encoder.dictionary, model.decoder.dictionary
    sentences = random_sentences(src_dict, lengths, seed)
    src = pad_batch(sentences, src_dict.pad(), left)
    g = torch.Generator().manual_seed(seed + 1)
    prev = torch.randint(tgt_dict.nspecial, len(tgt_dict), (len(lengths), tgt_len), generator=g)
    prev[:, 0] = tgt_dict.eos()
    return sentences, src, torch.tensor(lengths), prev


@pytest.mark.parametrize("overrides", VARIANTS, ids=IDS)
def test_incremental_decoding_equals_full_forward(overrides):
    model = build_model(**overrides)
    _, src, lengths, prev = batch(model)
    with torch.no_grad():
        full, extra = model(src, lengths, prev)
        encoder_out = model.encoder(src, lengths)
        state = {}
        steps = [model.decoder(prev[:, : t + 1], encoder_out, incremental_state=state) for t in range(prev.size(1))]
    step_logits = torch.cat([logits for logits, _ in steps], dim=1)
    step_attn = torch.cat([out["attn"][0] for _, out in steps], dim=1)
    assert full.shape == (src.size(0), prev.size(1), len(model.decoder.dictionary))
    torch.testing.assert_close(step_logits, full, atol=1e-5, rtol=0)
    torch.testing.assert_close(step_attn, extra["attn"][0], atol=1e-6, rtol=0)


@pytest.mark.parametrize("left", [True, False], ids=["left-padded", "right-padded"])
@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_attention_sums_to_one_and_is_zero_on_padding(attention_type, left):
    model = build_model(attention_type=attention_type)
    _, src, lengths, prev = batch(model, left=left)
    with torch.no_grad():
        _, extra = model(src, lengths, prev)
    attn = extra["attn"][0]  # B x T x S
    pad = src.eq(model.encoder.dictionary.pad())
    assert attn.shape == (src.size(0), prev.size(1), src.size(1))
    torch.testing.assert_close(attn.sum(-1), torch.ones(attn.shape[:2]))
    assert torch.all(attn.masked_select(pad.unsqueeze(1).expand_as(attn)) == 0)
    assert torch.all(attn.masked_select(~pad.unsqueeze(1).expand_as(attn)) > 0)


@pytest.mark.parametrize("overrides", VARIANTS[:4], ids=IDS[:4])
@pytest.mark.parametrize("left", [True, False], ids=["left-padded", "right-padded"])
def test_padding_never_changes_a_sentence(overrides, left):
    model = build_model(**overrides)
    sentences, src, lengths, prev = batch(model, lengths=(7, 3, 5, 2), left=left)
    with torch.no_grad():
        batched = model.encoder(src, lengths)
        logits, extra = model(src, lengths, prev)
        for b, sentence in enumerate(sentences):
            alone_src = torch.tensor([sentence])
            alone = model.encoder(alone_src, torch.tensor([len(sentence)]))
            positions = ~src[b].eq(model.encoder.dictionary.pad())
            torch.testing.assert_close(
                batched["encoder_out"][0][positions, b], alone["encoder_out"][0][:, 0], atol=1e-6, rtol=0
            )
            torch.testing.assert_close(batched["decoder_init"][0][b], alone["decoder_init"][0][0], atol=1e-6, rtol=0)
            alone_logits, alone_extra = model(alone_src, torch.tensor([len(sentence)]), prev[b : b + 1])
            torch.testing.assert_close(logits[b], alone_logits[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(extra["attn"][0][b][:, positions], alone_extra["attn"][0][0], atol=1e-6, rtol=0)


@pytest.mark.parametrize("left", [True, False], ids=["left-padded", "right-padded"])
def test_translation_alone_equals_translation_in_padded_batch(left):
    model = build_model()
    tgt_dict = model.decoder.dictionary
    sentences, src, lengths, _ = batch(model, lengths=(9, 2, 6, 4), left=left)
    generator = SequenceGenerator([model], tgt_dict, beam_size=3, max_len_b=12)
    with torch.no_grad():
        together = generator.generate([model], {"net_input": {"src_tokens": src, "src_lengths": lengths}})
        for b, sentence in enumerate(sentences):
            sample = {"net_input": {"src_tokens": torch.tensor([sentence]), "src_lengths": torch.tensor([len(sentence)])}}
            alone = generator.generate([model], sample)
            assert alone[0][0]["tokens"].tolist() == together[b][0]["tokens"].tolist()
            assert abs(float(alone[0][0]["score"]) - float(together[b][0]["score"])) < 1e-5


@pytest.mark.parametrize("overrides", VARIANTS[:4], ids=IDS[:4])
def test_reordering_is_exact(overrides):
    """Reorder encoder output and incremental state mid-sentence (with repeats, as beam search does): the next
    steps equal those of a batch built in the new order from the start."""
    model = build_model(**overrides)
    _, src, lengths, prev = batch(model, lengths=(7, 3, 5, 4, 6))
    new_order = torch.tensor([3, 0, 0, 4, 2, 1, 3])
    with torch.no_grad():
        state = {}
        encoder_out = model.encoder(src, lengths)
        for t in range(3):
            model.decoder(prev[:, : t + 1], encoder_out, incremental_state=state)
        encoder_out = model.encoder.reorder_encoder_out(encoder_out, new_order)
        model.decoder.reorder_incremental_state_scripting(state, new_order)
        reordered = [model.decoder(prev[new_order, : t + 1], encoder_out, incremental_state=state)[0]
                     for t in range(3, prev.size(1))]

        fresh_state = {}
        fresh_encoder_out = model.encoder(src[new_order], lengths[new_order])
        fresh = [model.decoder(prev[new_order, : t + 1], fresh_encoder_out, incremental_state=fresh_state)[0]
                 for t in range(prev.size(1))][3:]
    for got, want in zip(reordered, fresh):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_reorder_incremental_state_selects_every_cached_tensor():
    model = build_model()
    _, src, lengths, prev = batch(model)
    state = {}
    with torch.no_grad():
        model.decoder(prev[:, :2], model.encoder(src, lengths), incremental_state=state)
    before = {key: {k: v.clone() for k, v in model.decoder.get_incremental_state(state, key).items()}
              for key in ("state", "source")}
    new_order = torch.randperm(src.size(0), generator=torch.Generator().manual_seed(3))
    model.decoder.reorder_incremental_state_scripting(state, new_order)
    for key, cached in before.items():
        after = model.decoder.get_incremental_state(state, key)
        assert set(after) == set(cached)
        for name, value in cached.items():
            assert torch.equal(after[name], value.index_select(0, new_order)), (key, name)


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
            torch.testing.assert_close(extra["attn"][0][b][:, src[b] != pad], ref_attn, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("overrides", VARIANTS, ids=IDS)
def test_gradients_agree_with_the_reference(overrides):
    """Every parameter's gradient, through the fast model's deferred per-step gradients (deferred.py), equals plain
    autograd through the reference equations; and a second backward over the same graph adds the same again."""
    model = build_model(**overrides)
    sentences, src, lengths, prev = batch(model, lengths=(6, 3, 4))
    probe = torch.randn(len(sentences), prev.size(1), len(model.decoder.dictionary), generator=torch.Generator().manual_seed(3))
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


@pytest.mark.parametrize("how", ["outer autocast", "--autocast-bf16"])
@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_mixed_precision_training_step(attention_type, how):
    """Under autocast (fairseq's --amp, or the model's own --autocast-bf16; bfloat16 on CPU here) a training step
    runs in bfloat16 and its gradients stay close to the float32 ones; --autocast-bf16 leaves evaluation in
    float32, with the same logits as without the flag."""
    model = build_model(attention_type=attention_type, encoder_layers=2, dropout=0.0).train()  # train mode, no dropout
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
    from fairseq_bahdanau.precision import training_autocast

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
    from fairseq_bahdanau.precision import training_autocast

    with pytest.raises(ValueError, match="--autocast-bf16 is for training on CPUs.*--amp"):
        with training_autocast(True, torch.empty(0, device="meta")):
            pass


@pytest.fixture
def precision_module():
    """fairseq_bahdanau.precision with its warn-once and capability caches cleared before and after."""
    from fairseq_bahdanau import precision

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
        with caplog.at_level("WARNING", logger="fairseq_bahdanau.precision"):
            with precision.training_autocast(True, torch.empty(0)):
                pass
    warnings = [r.getMessage() for r in caplog.records if r.name == "fairseq_bahdanau.precision"]
    assert len(warnings) == (0 if fast else 1)
    assert all("no fast bfloat16" in w and "train without --autocast-bf16" in w for w in warnings)


@pytest.mark.parametrize("onednn", [True, False], ids=["onednn", "no-onednn"])
def test_fast_bfloat16_cpu_asks_onednn_then_avx512_bf16(onednn, precision_module, monkeypatch):
    """oneDNN's answer where torch has oneDNN; AVX512-BF16's where it has not (its query then fails)."""

    class NoOneDNN:
        def __getattr__(self, name):
            raise AttributeError(name)

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: "avx512-bf16", raising=False)
    if onednn:
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: "onednn")
    else:
        monkeypatch.setattr(torch.ops, "mkldnn", NoOneDNN())
    assert precision_module.fast_bfloat16_cpu() is True  # bool() of the one it asked
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: "", raising=False)
    precision_module.fast_bfloat16_cpu.cache_clear()
    assert precision_module.fast_bfloat16_cpu() is onednn


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_every_parameter_gets_a_gradient(attention_type):
    for ratio in (1.0, 0.5):
        model = build_model(attention_type=attention_type, decoder_layers=2, teacher_forcing_ratio=ratio).train()
        _, src, lengths, prev = batch(model)
        logits, _ = model(src, lengths, prev)
        logits.logsumexp(-1).sum().backward()
        unused = [name for name, p in model.named_parameters() if p.grad is None]
        assert not unused, f"parameters without gradient (ratio {ratio}): {unused}"


def test_word_dropout_drops_whole_words_in_training_only():
    from fairseq_bahdanau.dropout import drop_words

    emb = torch.randn(4, 50, 8)
    torch.manual_seed(0)
    out = drop_words(emb, 0.3, training=True)
    dropped = (out == 0).all(-1)
    assert 0.15 < dropped.float().mean() < 0.45
    torch.testing.assert_close(out[~dropped], emb[~dropped] / 0.7)
    assert drop_words(emb, 0.3, training=False) is emb
    with_flag, without = build_model(word_dropout=0.4), build_model(word_dropout=0.0)
    _, src, lengths, prev = batch(with_flag)
    with torch.no_grad():
        torch.testing.assert_close(with_flag(src, lengths, prev)[0], without(src, lengths, prev)[0], atol=0, rtol=0)
        with_flag.train(), without.train()
        torch.manual_seed(1)
        noisy = with_flag(src, lengths, prev)[0]
        torch.manual_seed(1)
        assert not torch.allclose(noisy, without(src, lengths, prev)[0])


@pytest.mark.parametrize("layers", [1, 2])
def test_padded_and_packed_encoder_runs_agree(layers):
    """The CPU path (each direction on the padded batch) and the GPU path (packed sequences) give the same
    annotations, zero at padding, the same final states and the same gradients (in eval mode: dropout between
    layers draws its masks over differently shaped tensors); with no padding, the CPU path equals nn.GRU on the
    whole batch."""
    encoder = build_model(encoder_layers=layers).encoder
    x = torch.randn(9, 6, encoder.embed_tokens.embedding_dim, requires_grad=True)
    lengths = torch.tensor([9, 4, 1, 7, 9, 2])
    probe = [torch.randn(9, 6, 2 * encoder.hidden_size), torch.randn(2 * layers, 6, encoder.hidden_size)]
    runs, grads = [], []
    for run in (encoder._padded_gru, encoder._packed_gru):
        out = run(x, lengths)
        sum((o * p).sum() for o, p in zip(out, probe)).backward()
        runs.append(out)
        grads.append([x.grad.clone()] + [p.grad.clone() for p in encoder.gru.parameters()])
        x.grad = None
        encoder.zero_grad()
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert (runs[0][0][4:, 1] == 0).all()
    full = torch.full((6,), 9)
    for a, b in zip(encoder._padded_gru(x, full), encoder.gru(x)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_init_range_draws_every_parameter_but_the_embeddings():
    default, uniform = build_model(), build_model(init_range=0.3)
    for (name, p), (_, q) in zip(default.named_parameters(), uniform.named_parameters()):
        if "embed_tokens" in name:
            torch.testing.assert_close(p, q, atol=0, rtol=0)  # built identically, then left alone
        else:
            assert q.abs().max() <= 0.3 and q.abs().max() > 0.2, name  # 0.3 > any default bound here
    assert (uniform.decoder.embed_tokens.weight[uniform.decoder.dictionary.pad()] == 0).all()


def test_teacher_forcing_ratio_feeds_predictions():
    """With ratio 0 the model's own greedy predictions are fed: step t's logits equal those of a teacher-forced
    run on the greedy prefix; with ratio 1 training uses the reference tokens (the fast path)."""
    model = build_model(teacher_forcing_ratio=0.0, dropout=0.0).train()
    _, src, lengths, prev = batch(model)
    with torch.no_grad():
        free, _ = model(src, lengths, prev)
        greedy = torch.cat([prev[:, :1], free.argmax(-1)[:, :-1]], dim=1)
        model.decoder.teacher_forcing_ratio = 1.0
        forced, _ = model(src, lengths, greedy)
        reference_forced, _ = model(src, lengths, prev)
    torch.testing.assert_close(free, forced, atol=1e-5, rtol=0)
    assert not torch.allclose(free, reference_forced)


def test_tutorial_formulation_agrees_with_the_fast_model():
    """The benchmark's naive baseline computes the same function as the fast model."""
    model = build_model("bahdanau_gru", encoder_hidden_size=24, decoder_hidden_size=20, encoder_embed_dim=12,
                        decoder_embed_dim=10)
    _, src, lengths, prev = batch(model)
    with torch.no_grad():
        fast, _ = model(src, lengths, prev)
        naive = reference.tutorial_forward(model, src, lengths, prev)
    torch.testing.assert_close(naive, fast, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_beam_hypotheses_share_one_source_row_and_reorder_exactly(attention_type):
    """After beam search's expansion the source cache keeps one row per sentence (not per hypothesis); reorders
    within sentences (beam search) and arbitrary ones (fallback to one row per hypothesis) stay exact, compared
    with decoding from an encoder output that does not know its rows are copies."""
    model = build_model(attention_type=attention_type)
    _, src, lengths, prev = batch(model, lengths=(7, 3, 5))
    beam = 3
    expand = torch.arange(src.size(0)).repeat_interleave(beam)
    within = torch.tensor([2, 2, 0, 3, 5, 4, 8, 6, 6])  # hypotheses move only inside their sentence
    dropped = torch.tensor([3, 4, 4, 8, 7, 6])  # sentence 0 finished
    anything = torch.tensor([5, 0, 3, 3, 1, 2])  # no beam structure
    prev = prev[expand]
    with torch.no_grad():
        grouped_state = {}
        encoder_out = model.encoder.reorder_encoder_out(model.encoder(src, lengths), expand)
        assert encoder_out["row_copies"] == [beam]
        plain_out = {k: v for k, v in encoder_out.items() if k != "row_copies"}
        rows = prev.size(0)
        order = torch.arange(rows)
        for t, new_order in enumerate([None, within, dropped, anything, None]):
            if new_order is not None:
                model.decoder.reorder_incremental_state_scripting(grouped_state, new_order)
                order = order[new_order]
            source = model.decoder.get_incremental_state(grouped_state, "source")
            if t in (1, 2):
                assert source["keys"].size(0) * beam == order.numel()  # still one row per sentence
            got, got_extra = model.decoder(prev[order, : t + 1], encoder_out=model.encoder.reorder_encoder_out(
                encoder_out, order), incremental_state=grouped_state)
            fresh_state = {}
            fresh_out = model.encoder.reorder_encoder_out(plain_out, order)
            fresh_out.pop("row_copies", None)
            for u in range(t + 1):
                want, want_extra = model.decoder(prev[order, : u + 1], fresh_out, incremental_state=fresh_state)
            assert model.decoder.get_incremental_state(fresh_state, "source")["keys"].size(0) == order.numel()
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
            torch.testing.assert_close(got_extra["attn"][0], want_extra["attn"][0], atol=1e-6, rtol=0)
        assert model.decoder.get_incremental_state(grouped_state, "source")["keys"].size(0) == order.numel()


def test_encoder_reorder_within_sentences_copies_nothing():
    """Beam search reorders the encoder output every step; a reorder that only moves copies of a sentence
    among themselves returns the same tensors, any other one selects rows exactly."""
    model = build_model()
    _, src, lengths, _ = batch(model, lengths=(7, 3, 5))
    with torch.no_grad():
        plain = model.encoder(src, lengths)
        expanded = model.encoder.reorder_encoder_out(plain, torch.arange(3).repeat_interleave(2))
        assert expanded["row_copies"] == [2]
        same = model.encoder.reorder_encoder_out(expanded, torch.tensor([1, 0, 2, 2, 4, 5]))
        assert same is expanded
        assert model.encoder.reorder_encoder_out(plain, torch.arange(3)) is plain
        for order in ([2, 3, 0, 0], [0, 2, 3, 5], [5, 4, 3, 2, 1, 0]):
            order = torch.tensor(order)
            got = model.encoder.reorder_encoder_out(expanded, order)
            for key in ("encoder_out", "encoder_padding_mask", "decoder_init"):
                axis = 1 if key == "encoder_out" else 0
                assert torch.equal(got[key][0], expanded[key][0].index_select(axis, order)), key
        assert model.encoder.reorder_encoder_out(expanded, torch.tensor([2, 3, 0, 0]))["row_copies"] == [2]
        assert "row_copies" not in model.encoder.reorder_encoder_out(expanded, torch.tensor([0, 2, 3, 5]))


def test_dropout_zeroes_with_probability_p_scales_the_rest_and_routes_gradients():
    from fairseq_bahdanau.dropout import dropout

    x = torch.randn(64, 100, 32, requires_grad=True)
    torch.manual_seed(0)
    out = dropout(x, 0.3, training=True)
    kept = out != 0
    assert 0.69 < kept.float().mean() < 0.71
    torch.testing.assert_close(out[kept], x[kept] / 0.7)
    out.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / 0.7)
    assert dropout(x, 0.3, training=False) is x and dropout(x, 0.0, training=True) is x
    assert (dropout(x, 1.0, training=True) == 0).all()
