"""What training does beyond the equations: dropout (its CPU mask, word dropout, --retain-dropout at inference)
and scheduled feeding (--teacher-forcing-ratio)."""

import pytest
import torch

from helpers import batch, build_model


def test_word_dropout_drops_whole_words_in_training_only():
    from fairseq_bahdanau.model.dropout import drop_words

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


def test_dropout_zeroes_with_probability_p_scales_the_rest_and_routes_gradients():
    from fairseq_bahdanau.model.dropout import dropout

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


@pytest.mark.parametrize("modules", [None, ["BiGRUEncoder"], ["AdditiveGRUDecoder"]])
def test_retain_dropout_keeps_dropout_on_at_inference(modules):
    """fairseq-generate --retain-dropout [--retain-dropout-modules ...] (model.make_generation_fast_) switches
    dropout on at inference, in the named modules only; without it inference is deterministic."""
    model = build_model(dropout=0.3)
    _, src, lengths, prev = batch(model)

    def outputs():
        with torch.no_grad():
            encoded = model.encoder(src, lengths)["encoder_out"][0]
            return encoded, model.decoder(prev, model.encoder(src, lengths))[0]

    (enc_a, dec_a), (enc_b, dec_b) = outputs(), outputs()
    assert torch.equal(enc_a, enc_b) and torch.equal(dec_a, dec_b)
    model.make_generation_fast_(retain_dropout=True, retain_dropout_modules=modules)
    (enc_a, dec_a), (enc_b, dec_b) = outputs(), outputs()
    assert torch.equal(enc_a, enc_b) == (modules == ["AdditiveGRUDecoder"])
    assert not torch.equal(dec_a, dec_b)
    assert not model.training


@pytest.mark.parametrize("path", ["_padded_gru", "_packed_gru"], ids=["cpu-padded", "packed (the GPU path)"])
def test_retain_dropout_reaches_the_dropout_between_encoder_layers_on_every_path(path):
    """--retain-dropout with --encoder-layers 2: dropout between the layers at inference, on the CPU's padded path
    and on the packed path that GPUs take (forced here on the CPU); nn.GRU's own forward would follow
    ``training`` only."""
    model = build_model(encoder_layers=2, dropout=0.3).eval()
    encoder = model.encoder
    x = torch.randn(7, 3, encoder.embed_tokens.embedding_dim)
    lengths = torch.tensor([7, 5, 2])
    run = getattr(encoder, path)
    with torch.no_grad():
        assert torch.equal(run(x, lengths)[0], run(x, lengths)[0])  # inference: no dropout
        model.make_generation_fast_(retain_dropout=True)
        first, second = run(x, lengths)[0], run(x, lengths)[0]
    assert not torch.equal(first, second)  # the second layer reads a dropped-out first layer


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


def test_scheduled_feeding_features_are_those_its_logits_were_computed_from():
    """features_only with --teacher-forcing-ratio < 1 returns the very features (dropout mask included) that the
    loop computed its logits from, not a recomputation with a fresh mask."""
    model = build_model(teacher_forcing_ratio=0.5, dropout=0.3).train()
    _, src, lengths, prev = batch(model)
    encoder_out = model.encoder(src, lengths)
    with torch.no_grad():
        torch.manual_seed(3)
        features, _ = model.decoder(prev, encoder_out, features_only=True)
        torch.manual_seed(3)
        logits, _ = model.decoder(prev, encoder_out)
    assert model.decoder.deep_output is None  # so the output layer is the projection alone, without dropout
    torch.testing.assert_close(model.decoder.output_projection(features), logits, atol=1e-6, rtol=0)
