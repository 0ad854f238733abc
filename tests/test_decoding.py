"""Decoding as fairseq drives it, on tiny models with random weights: incremental decoding equals the full forward,
padding never changes a sentence, and beam search's reorders are exact (also with shared source rows)."""

import pytest
import torch
from fairseq.sequence_generator import SequenceGenerator

from fairseq_bahdanau.model.encoder_out import row_copies
from helpers import ATTENTION_TYPES, CORE, CORE_IDS, IDS, VARIANTS, batch, build_model


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
    assert full.shape == (src.size(0), prev.size(1), len(model.decoder.dictionary))
    torch.testing.assert_close(step_logits, full, atol=1e-5, rtol=0)
    if overrides["attention_type"] == "none":
        assert extra["attn"] == [None] and all(out["attn"] == [None] for _, out in steps)
    else:
        step_attn = torch.cat([out["attn"][0] for _, out in steps], dim=1)
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


@pytest.mark.parametrize("overrides", CORE, ids=CORE_IDS)
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
            if extra["attn"][0] is not None:
                torch.testing.assert_close(extra["attn"][0][b][:, positions], alone_extra["attn"][0][0], atol=1e-6,
                                           rtol=0)


@pytest.mark.parametrize("attention_type", ["additive", "none"])
@pytest.mark.parametrize("left", [True, False], ids=["left-padded", "right-padded"])
def test_translation_alone_equals_translation_in_padded_batch(left, attention_type):
    model = build_model(attention_type=attention_type)
    tgt_dict = model.decoder.dictionary
    sentences, src, lengths, _ = batch(model, lengths=(9, 2, 6, 4), left=left)
    generator = SequenceGenerator([model], tgt_dict, beam_size=3, max_len_b=12)
    with torch.no_grad():
        together = generator.generate([model], {"net_input": {"src_tokens": src, "src_lengths": lengths}})
        for b, sentence in enumerate(sentences):
            sample = {"net_input": {"src_tokens": torch.tensor([sentence]),
                                    "src_lengths": torch.tensor([len(sentence)])}}
            alone = generator.generate([model], sample)
            assert alone[0][0]["tokens"].tolist() == together[b][0]["tokens"].tolist()
            assert abs(float(alone[0][0]["score"]) - float(together[b][0]["score"])) < 1e-5


@pytest.mark.parametrize("overrides", CORE, ids=CORE_IDS)
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


@pytest.mark.parametrize("attention_type", ["additive", "general", "none"])
def test_reorder_incremental_state_selects_every_cached_tensor(attention_type):
    model = build_model(attention_type=attention_type)
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
        assert row_copies(encoder_out) == beam
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
        assert row_copies(expanded) == 2
        same = model.encoder.reorder_encoder_out(expanded, torch.tensor([1, 0, 2, 2, 4, 5]))
        assert same is expanded
        assert model.encoder.reorder_encoder_out(plain, torch.arange(3)) is plain
        for order in ([2, 3, 0, 0], [0, 2, 3, 5], [5, 4, 3, 2, 1, 0]):
            order = torch.tensor(order)
            got = model.encoder.reorder_encoder_out(expanded, order)
            for key in ("encoder_out", "encoder_padding_mask", "decoder_init"):
                axis = 1 if key == "encoder_out" else 0
                assert torch.equal(got[key][0], expanded[key][0].index_select(axis, order)), key
        assert row_copies(model.encoder.reorder_encoder_out(expanded, torch.tensor([2, 3, 0, 0]))) == 2
        assert "row_copies" not in model.encoder.reorder_encoder_out(expanded, torch.tensor([0, 2, 3, 5]))


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


def test_without_attention_the_context_is_the_final_states_and_the_same_at_every_step():
    """--attention-type none: c = [h->_Tx; h<-_1] of each sentence (its last real position's forward half, its first
    real position's backward half), fed at every step; the output layer reads it beside s_i and E y_{i-1}."""
    model = build_model(attention_type="none")
    sentences, src, lengths, prev = batch(model, lengths=(7, 3, 5))
    half = model.encoder.hidden_size
    with torch.no_grad():
        encoder_out = model.encoder(src, lengths)
        annotations = encoder_out["encoder_out"][0]  # S x B x 2H, left-padded
        features, _ = model.decoder(prev, encoder_out, features_only=True)
    for b, n in enumerate(lengths.tolist()):
        real = annotations[-n:, b]
        expected = torch.cat([real[-1, :half], real[0, half:]])
        torch.testing.assert_close(encoder_out["encoder_summary"][0][b], expected)
        context = features[b, :, model.decoder.hidden_size : model.decoder.hidden_size + 2 * half]
        torch.testing.assert_close(context, expected.expand_as(context))
