"""Every command-line flag of the ``bahdanau_gru`` model family, with its help text and default.

The defaults are the reference notebook's configuration (embeddings 256, encoder GRU 512 per direction, decoder
GRU 512, dropout 0.5, additive attention, deep output straight to the vocabulary). Named architectures in
``architectures.py`` change only what differs. ``validate`` checks a built configuration and raises ``ValueError``
naming the offending flag, so that a bad value fails at start-up and not in the middle of an epoch.
"""

from dataclasses import dataclass, field, fields
from typing import Any, Dict

from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from omegaconf import II

ATTENTION_TYPES = ["additive", "dot", "general", "none"]
OUTPUT_ACTIVATIONS = ["linear", "tanh", "maxout"]


@dataclass
class BahdanauGRUConfig(FairseqDataclass):
    encoder_embed_dim: int = field(default=256, metadata={"help": "source embedding dimension"})
    encoder_hidden_size: int = field(
        default=512, metadata={"help": "encoder GRU hidden size per direction (the encoder is bidirectional)"}
    )
    encoder_layers: int = field(default=1, metadata={"help": "number of stacked bidirectional GRU layers"})
    decoder_embed_dim: int = field(default=256, metadata={"help": "target embedding dimension"})
    decoder_hidden_size: int = field(default=512, metadata={"help": "decoder GRU hidden size"})
    decoder_layers: int = field(default=1, metadata={"help": "number of stacked decoder GRU layers"})
    decoder_out_embed_dim: int = field(
        default=0,
        metadata={
            "help": "size of the deep-output layer before the vocabulary projection (0: project the output "
            "features straight onto the vocabulary, as the reference notebook does)"
        },
    )
    decoder_output_activation: ChoiceEnum(OUTPUT_ACTIVATIONS) = field(  # type: ignore[valid-type]
        default="linear",
        metadata={
            "help": "non-linearity of the deep-output layer: linear, tanh, or maxout over pairs of units "
            "(Bahdanau et al. 2015, Appendix A.2.2); needs --decoder-out-embed-dim > 0 unless linear"
        },
    )
    attention_type: ChoiceEnum(ATTENTION_TYPES) = field(  # type: ignore[valid-type]
        default="additive",
        metadata={
            "help": "additive: v^T tanh(W s_{i-1} + U h_j) (Bahdanau et al. 2015); dot / general: "
            "s_t^T h_j / s_t^T W h_j with the attentional state tanh(W_c [c_t; s_t]) (Luong et al. 2015); none: "
            "no attention, the fixed context [h->_Tx; h<-_1] at every step (the paper's RNNencdec baseline, Cho "
            "et al. 2014)"
        },
    )
    attention_dim: int = field(
        default=0, metadata={"help": "hidden size of the additive attention MLP (0: the decoder hidden size); "
                             "additive attention only: dot and general scores have no MLP and ignore it"}
    )
    dropout: float = field(default=0.5, metadata={"help": "dropout probability"})
    word_dropout: float = field(
        default=0.0,
        metadata={
            "help": "probability of dropping a whole token in training: its source or target input embedding "
            "becomes zero and the others are scaled by 1/(1-p) (token-level word dropout; Gal & Ghahramani 2016 "
            "drop word types); 0: off"
        },
    )
    init_range: float = field(
        default=0.0,
        metadata={
            "help": "r > 0: initialise every parameter but the embeddings (and --layer-norm's gains and biases, "
            "which stay 1 and 0) uniformly in [-r, r], as fairseq's lstm does with 0.1 (it learns faster here than "
            "PyTorch's default initialisation); 0: PyTorch's default"
        },
    )
    share_decoder_input_output_embed: bool = field(
        default=False,
        metadata={
            "help": "tie the target embedding and the vocabulary projection (needs --decoder-out-embed-dim "
            "equal to --decoder-embed-dim)"
        },
    )
    share_all_embeddings: bool = field(
        default=False,
        metadata={
            "help": "one embedding matrix for the source, the target and the vocabulary projection (needs a joined "
            "dictionary, fairseq-preprocess --joined-dictionary, and equal --encoder-embed-dim, --decoder-embed-dim "
            "and --decoder-out-embed-dim; implies --share-decoder-input-output-embed)"
        },
    )
    teacher_forcing_ratio: float = field(
        default=1.0,
        metadata={
            "help": "probability, per decoder step in training, of feeding the reference token rather than the "
            "model's own prediction (1.0: plain teacher forcing, the fast path)"
        },
    )
    layer_norm: bool = field(
        default=False,
        metadata={
            "help": "layer-normalise the gate pre-activations of every encoder and decoder GRU, input and recurrent "
            "sides apart (Ba et al. 2016, as Nematus does); the encoder's recurrence then runs in a Python loop "
            "instead of PyTorch's GRU kernel"
        },
    )
    autocast_bf16: bool = field(
        default=False,
        metadata={
            "help": "run the training forward under torch.autocast in bfloat16 (parameters, optimizer, checkpoints, "
            "validation and generation stay float32): faster on CPUs with AVX512-BF16 or AMX"
        },
    )
    max_source_positions: int = II("task.max_source_positions")
    max_target_positions: int = II("task.max_target_positions")


def config_defaults() -> Dict[str, Any]:
    """The dataclass defaults of every model flag, by attribute name (``II`` interpolations left out)."""
    defaults = {}
    for f in fields(BahdanauGRUConfig):
        if f.name.startswith("_") or f.name.startswith("max_"):
            continue
        defaults[f.name] = f.default
    return defaults


def validate(cfg: Any) -> None:
    """Raise ``ValueError`` naming the flag if ``cfg`` (Namespace or DictConfig) cannot build a model."""

    def flag(name: str) -> str:
        return "--" + name.replace("_", "-")

    for name in (
        "encoder_embed_dim",
        "encoder_hidden_size",
        "encoder_layers",
        "decoder_embed_dim",
        "decoder_hidden_size",
        "decoder_layers",
    ):
        value = getattr(cfg, name)
        if value is None or int(value) <= 0:
            raise ValueError(f"{flag(name)} must be a positive integer, got {value}")
    for name in ("decoder_out_embed_dim", "attention_dim"):
        if int(getattr(cfg, name)) < 0:
            raise ValueError(f"{flag(name)} must be >= 0, got {getattr(cfg, name)}")
    attention = str(cfg.attention_type)
    if attention not in ATTENTION_TYPES:
        raise ValueError(f"--attention-type must be one of {ATTENTION_TYPES}, got {attention!r}")
    activation = str(cfg.decoder_output_activation)
    if activation not in OUTPUT_ACTIVATIONS:
        raise ValueError(f"--decoder-output-activation must be one of {OUTPUT_ACTIVATIONS}, got {activation!r}")
    if activation != "linear" and int(cfg.decoder_out_embed_dim) <= 0:
        raise ValueError(f"--decoder-output-activation {activation} needs --decoder-out-embed-dim > 0")
    if float(cfg.init_range) < 0.0:
        raise ValueError(f"--init-range must be >= 0, got {cfg.init_range}")
    for name in ("dropout", "word_dropout"):
        if not 0.0 <= float(getattr(cfg, name)) < 1.0:
            raise ValueError(f"{flag(name)} must be in [0, 1), got {getattr(cfg, name)}")
    if not 0.0 <= float(cfg.teacher_forcing_ratio) <= 1.0:
        raise ValueError(f"--teacher-forcing-ratio must be in [0, 1], got {cfg.teacher_forcing_ratio}")
    if attention == "dot" and int(cfg.decoder_hidden_size) != 2 * int(cfg.encoder_hidden_size):
        raise ValueError(
            "--attention-type dot scores s_t^T h_j and needs --decoder-hidden-size equal to 2 x "
            f"--encoder-hidden-size (the bidirectional state), got {cfg.decoder_hidden_size} and "
            f"{cfg.encoder_hidden_size}; use --attention-type general for other sizes"
        )
