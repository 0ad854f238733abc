"""Named architectures of the ``bahdanau_gru`` model. Each sets only what differs from the dataclass defaults
(``config.BahdanauGRUConfig``, the reference notebook's configuration); a flag given on the command line wins.

Architecture functions run on argparse Namespaces (command line) and on omegaconf DictConfigs (checkpoints).
"""

from typing import Any

from fairseq.models import register_model_architecture

from .config import config_defaults


def _default(cfg: Any, name: str, value: Any) -> None:
    """Set ``cfg.name = value`` unless the user (or a more specific architecture) already set it."""
    if getattr(cfg, name, None) is None:
        setattr(cfg, name, value)


def base_architecture(cfg: Any) -> None:
    """Fill every unset flag with its dataclass default."""
    for name, value in config_defaults().items():
        _default(cfg, name, value)
    _default(cfg, "max_source_positions", 1024)
    _default(cfg, "max_target_positions", 1024)


@register_model_architecture("bahdanau_gru", "bahdanau_gru_rnnsearch")
def rnnsearch(cfg: Any) -> None:
    """RNNsearch (Bahdanau et al. 2015, Appendix B.2): 620-dim embeddings, 1000 hidden units, an attention MLP
    of 1000 units and a maxout deep output of 500 units."""
    _default(cfg, "encoder_embed_dim", 620)
    _default(cfg, "decoder_embed_dim", 620)
    _default(cfg, "encoder_hidden_size", 1000)
    _default(cfg, "decoder_hidden_size", 1000)
    _default(cfg, "attention_dim", 1000)
    _default(cfg, "decoder_out_embed_dim", 500)
    _default(cfg, "decoder_output_activation", "maxout")
    base_architecture(cfg)


@register_model_architecture("bahdanau_gru", "bahdanau_gru_encdec")
def encdec(cfg: Any) -> None:
    """The RNN encoder-decoder without attention (the paper's RNNencdec baseline; Cho et al. 2014): the notebook's
    configuration with the fixed context ``[h->_Tx; h<-_1]`` at every step (``--attention-type none``)."""
    _default(cfg, "attention_type", "none")
    base_architecture(cfg)


@register_model_architecture("bahdanau_gru", "bahdanau_gru_tiny")
def tiny(cfg: Any) -> None:
    """Small enough for tests and the CPU demo (the decoder is twice the encoder so that dot attention fits)."""
    _default(cfg, "encoder_embed_dim", 32)
    _default(cfg, "decoder_embed_dim", 32)
    _default(cfg, "encoder_hidden_size", 32)
    _default(cfg, "decoder_hidden_size", 64)
    _default(cfg, "dropout", 0.1)
    base_architecture(cfg)
