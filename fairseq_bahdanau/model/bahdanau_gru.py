"""The ``bahdanau_gru`` fairseq model: bidirectional GRU encoder + attention GRU decoder."""

import logging
from typing import Any, Dict, List, Optional, Tuple

from fairseq.models import FairseqEncoderDecoderModel, register_model
from torch import Tensor, nn

from . import compat  # noqa: F401  (fairseq's patches, e.g. checkpoints that load under torch >= 2.6)
from .config import BahdanauGRUConfig, validate
from .decoder import build_decoder, projection_input_dim
from .encoder import BiGRUEncoder
from .precision import training_autocast

logger = logging.getLogger(__name__)


def reinitialise(model: nn.Module, init_range: float) -> None:
    """Draw every parameter uniformly from [-init_range, init_range], in ``named_parameters`` order, except those
    of the token embeddings (``nn.Embedding``: uniform in [-0.1, 0.1] already, zero at padding; a tied output
    projection is the target embedding and is left alone too) and of the layer normalisations (``nn.LayerNorm``:
    gains 1, biases 0)."""
    keep = {id(p) for module in model.modules() if isinstance(module, (nn.Embedding, nn.LayerNorm))
            for p in module.parameters(recurse=False)}
    for param in model.parameters():
        if id(param) not in keep:
            nn.init.uniform_(param, -init_range, init_range)


def check_tying(cfg: Any) -> None:
    """Raise ``ValueError`` naming the flag if ``cfg`` ties matrices of different sizes: the vocabulary projection's
    input size (the decoder family's rule, ``projection_input_dim``) against the embeddings'."""
    attention = str(cfg.attention_type)
    projection = projection_input_dim(attention, int(cfg.decoder_hidden_size), 2 * int(cfg.encoder_hidden_size),
                                      int(cfg.decoder_embed_dim), int(cfg.decoder_out_embed_dim))
    if cfg.share_all_embeddings and not int(cfg.encoder_embed_dim) == int(cfg.decoder_embed_dim) == projection:
        raise ValueError(
            "--share-all-embeddings needs --encoder-embed-dim, --decoder-embed-dim and the vocabulary projection's "
            f"input ({projection}: --decoder-out-embed-dim, or without it the decoder's output features) equal (one "
            f"matrix for all three), got {cfg.encoder_embed_dim}, {cfg.decoder_embed_dim} and {projection}"
        )
    if cfg.share_decoder_input_output_embed and projection != int(cfg.decoder_embed_dim):
        raise ValueError(
            "--share-decoder-input-output-embed needs the vocabulary projection's input (--decoder-out-embed-dim, "
            "or without it the decoder's output features: the decoder hidden size for dot and general attention) "
            f"equal to --decoder-embed-dim (the projection then reuses the embedding), got {projection} and "
            f"{cfg.decoder_embed_dim}"
        )


@register_model("bahdanau_gru", dataclass=BahdanauGRUConfig)
class BahdanauGRUModel(FairseqEncoderDecoderModel):
    """Bahdanau, Cho & Bengio (2015), "Neural Machine Translation by Jointly Learning to Align and Translate".

    ``forward(src_tokens, src_lengths, prev_output_tokens)`` returns logits B x T x V and
    ``{"attn": [B x T x S]}``; the attention is there in training and inference alike, so
    ``fairseq-generate --print-alignment`` works.
    """

    #: --autocast-bf16 (set by build_model): the training forward under bfloat16 autocast
    autocast_bf16 = False

    @classmethod
    def build_model(cls, cfg, task) -> "BahdanauGRUModel":
        from .architectures import base_architecture

        base_architecture(cfg)
        validate(cfg)
        check_tying(cfg)
        if cfg.share_all_embeddings and task.source_dictionary != task.target_dictionary:
            raise ValueError(
                "--share-all-embeddings needs one dictionary for both languages: binarize the data with "
                "fairseq-preprocess --joined-dictionary"
            )
        encoder = BiGRUEncoder(
            task.source_dictionary,
            embed_dim=cfg.encoder_embed_dim,
            hidden_size=cfg.encoder_hidden_size,
            num_layers=cfg.encoder_layers,
            decoder_hidden_size=cfg.decoder_hidden_size,
            decoder_layers=cfg.decoder_layers,
            dropout=cfg.dropout,
            max_positions=cfg.max_source_positions,
            word_dropout=cfg.word_dropout,
            layer_norm=bool(cfg.layer_norm),
        )
        decoder = build_decoder(
            str(cfg.attention_type),
            task.target_dictionary,
            embed_dim=cfg.decoder_embed_dim,
            hidden_size=cfg.decoder_hidden_size,
            num_layers=cfg.decoder_layers,
            encoder_output_dim=encoder.output_dim,
            attention_dim=cfg.attention_dim,
            out_embed_dim=cfg.decoder_out_embed_dim,
            output_activation=str(cfg.decoder_output_activation),
            dropout=cfg.dropout,
            share_input_output_embed=bool(cfg.share_decoder_input_output_embed or cfg.share_all_embeddings),
            teacher_forcing_ratio=cfg.teacher_forcing_ratio,
            max_positions=cfg.max_target_positions,
            word_dropout=cfg.word_dropout,
            layer_norm=bool(cfg.layer_norm),
        )
        if cfg.share_all_embeddings:  # the source reads the target's embedding (the projection's too)
            encoder.embed_tokens = decoder.embed_tokens
        model = cls(encoder, decoder)
        model.autocast_bf16 = bool(cfg.autocast_bf16)
        if float(cfg.init_range) > 0.0:
            reinitialise(model, float(cfg.init_range))
        return model

    def forward(
        self, src_tokens: Tensor, src_lengths: Tensor, prev_output_tokens: Tensor, features_only: bool = False
    ) -> Tuple[Tensor, Dict[str, List[Optional[Tensor]]]]:
        """The teacher-forced forward: logits B x T x V (or the output layer's input, ``features_only``) and the
        attention. With ``--autocast-bf16``, in training, under bfloat16 autocast (the logits are then bfloat16;
        fairseq's criteria take their log-softmax in float32)."""
        if self.autocast_bf16 and self.training:
            with training_autocast(True, src_tokens):
                return self._forward(src_tokens, src_lengths, prev_output_tokens, features_only)
        return self._forward(src_tokens, src_lengths, prev_output_tokens, features_only)

    def _forward(
        self, src_tokens: Tensor, src_lengths: Tensor, prev_output_tokens: Tensor, features_only: bool
    ) -> Tuple[Tensor, Dict[str, List[Optional[Tensor]]]]:
        encoder_out = self.encoder(src_tokens, src_lengths=src_lengths)
        return self.decoder(prev_output_tokens, encoder_out=encoder_out, features_only=features_only)

    def prepare_for_inference_(self, cfg) -> None:
        """fairseq-generate / -interactive's set-up; ``--print-alignment`` needs attention weights, which the
        fixed-context model (``--attention-type none``) does not have: it stops here with a message saying so."""
        generation = getattr(cfg, "generation", cfg)
        if getattr(generation, "print_alignment", None) and getattr(self.decoder, "attention", None) is None:
            raise ValueError(
                "--print-alignment needs attention weights, and this model has none: it was trained with "
                "--attention-type none (the fixed-context encoder-decoder); leave out --print-alignment"
            )
        super().prepare_for_inference_(cfg)

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        """Load parameters as fairseq's ``load_state_dict`` does (upgrade old names, once; prune for
        ``model_cfg``), first checking that they belong to this model and to these dictionaries, so that a
        mismatch fails with a message naming the problem rather than a list of tensor shapes."""
        from fairseq.checkpoint_utils import prune_state_dict
        from fairseq.dataclass.utils import convert_namespace_to_omegaconf

        if model_cfg is None and args is not None:
            model_cfg = convert_namespace_to_omegaconf(args).model
        self.upgrade_state_dict(state_dict)
        own = self.state_dict()
        for side, module in (("source", self.encoder), ("target", self.decoder)):
            key = ("encoder" if side == "source" else "decoder") + ".embed_tokens.weight"
            if key in state_dict and state_dict[key].size(0) != len(module.dictionary):
                raise ValueError(
                    f"the checkpoint's {side} vocabulary has {state_dict[key].size(0)} entries but the {side} "
                    f"dictionary given here has {len(module.dictionary)}: use the data directory (dict.*.txt) the "
                    "model was trained with"
                )
        if strict:
            missing, unexpected = sorted(set(own) - set(state_dict)), sorted(set(state_dict) - set(own))
            if missing or unexpected:
                raise ValueError(
                    "the checkpoint's parameters do not belong to this bahdanau_gru model (another architecture "
                    f"or configuration): {len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected "
                    f"(e.g. {unexpected[:3]})"
                )
            mismatched = [k for k, v in state_dict.items() if v.shape != own[k].shape]
            if mismatched:
                k = mismatched[0]
                raise ValueError(
                    f"the checkpoint's parameter sizes do not match this model's configuration: {k} is "
                    f"{tuple(state_dict[k].shape)} in the checkpoint and {tuple(own[k].shape)} here "
                    f"({len(mismatched)} such parameters)"
                )
        return nn.Module.load_state_dict(self, prune_state_dict(state_dict, model_cfg), strict)


from . import architectures  # noqa: E402,F401  (the named architectures, registered after their model)
