"""The ``bahdanau_gru`` fairseq model: bidirectional GRU encoder + attention GRU decoder."""

import logging

from fairseq.models import FairseqEncoderDecoderModel, register_model

from .config import BahdanauGRUConfig, validate
from .decoder import BahdanauGRUDecoder
from .encoder import BiGRUEncoder

logger = logging.getLogger(__name__)


@register_model("bahdanau_gru", dataclass=BahdanauGRUConfig)
class BahdanauGRUModel(FairseqEncoderDecoderModel):
    """Bahdanau, Cho & Bengio (2015), "Neural Machine Translation by Jointly Learning to Align and Translate".

    ``forward(src_tokens, src_lengths, prev_output_tokens)`` returns logits B x T x V and
    ``{"attn": [B x T x S]}``; the attention is there in training and inference alike, so
    ``fairseq-generate --print-alignment`` works.
    """

    @classmethod
    def build_model(cls, cfg, task) -> "BahdanauGRUModel":
        from .architectures import base_architecture

        base_architecture(cfg)
        validate(cfg)
        encoder = BiGRUEncoder(
            task.source_dictionary,
            embed_dim=cfg.encoder_embed_dim,
            hidden_size=cfg.encoder_hidden_size,
            num_layers=cfg.encoder_layers,
            decoder_hidden_size=cfg.decoder_hidden_size,
            decoder_layers=cfg.decoder_layers,
            dropout=cfg.dropout,
            max_positions=cfg.max_source_positions,
        )
        decoder = BahdanauGRUDecoder(
            task.target_dictionary,
            embed_dim=cfg.decoder_embed_dim,
            hidden_size=cfg.decoder_hidden_size,
            num_layers=cfg.decoder_layers,
            encoder_output_dim=encoder.output_dim,
            attention_type=str(cfg.attention_type),
            attention_dim=cfg.attention_dim,
            out_embed_dim=cfg.decoder_out_embed_dim,
            output_activation=str(cfg.decoder_output_activation),
            dropout=cfg.dropout,
            share_input_output_embed=cfg.share_decoder_input_output_embed,
            teacher_forcing_ratio=cfg.teacher_forcing_ratio,
            max_positions=cfg.max_target_positions,
        )
        return cls(encoder, decoder)
