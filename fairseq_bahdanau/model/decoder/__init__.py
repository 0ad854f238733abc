"""The attention GRU decoders (Bahdanau et al. 2015, Section 3.1 and Appendix A.2.2; Luong et al. 2015, Section 3).

One module per family, each a subclass of ``base.GRUDecoder``, which owns what every family shares: the
embeddings, the GRU layers, the output layer, the step loop (teacher-forced, incremental, or with scheduled
feeding), the incremental cache and its reordering. A family says what differs, in its own module: its ``Source``
(what it computes once per sentence), its ``State`` (what it carries between steps), its ``Reads`` (what every
step of a run reads, arranged once per run) and ``_step``, which reads top to bottom from the previous state to the
output layer's input:

| module (--attention-type) | attention runs | query | first GRU layer fed | output layer reads |
|---|---|---|---|---|
| ``additive`` (the paper) | before GRU update | ``s_{i-1}`` | ``[E y_{i-1}; c_i]`` | ``[s_i; c_i; E y_{i-1}]`` |
| ``luong`` (dot, general) | after GRU update | ``s_t`` | ``[E y_{t-1}; ~s_{t-1}]`` | ``~s_t`` |
| ``fixed_context`` (none) | never | | ``[E y_{i-1}; c]`` | ``[s_i; c; E y_{i-1}]`` |

``source.py`` holds the attention families' common source side (keys, values, padding bias).

Everything that does not depend on the previous step is kept out of the step loop: the attention keys (once per
sentence, cached across incremental steps), the embedding part of the first GRU layer's input gates (one matrix
multiply for all steps) and the output projection (applied once after the loop). Scheduled feeding
(``--teacher-forcing-ratio`` below 1) is the only mode that needs the output layer inside the loop.

Deployment exports a family's ``_new_source`` and ``_step`` as ONNX graphs (``model/graphs.py``).
"""

from .additive import AdditiveGRUDecoder
from .base import GRUDecoder, Run, Shared, State, Step, projection_dim
from .fixed_context import FixedContextGRUDecoder
from .luong import LuongGRUDecoder

__all__ = ["AdditiveGRUDecoder", "FixedContextGRUDecoder", "GRUDecoder", "LuongGRUDecoder", "Run", "Shared",
           "State", "Step", "DECODERS", "build_decoder", "projection_input_dim"]

#: The decoder class of each --attention-type.
DECODERS = {kind: cls for cls in (AdditiveGRUDecoder, LuongGRUDecoder, FixedContextGRUDecoder)
            for kind in cls.attention_types}


def projection_input_dim(attention_type: str, hidden_size: int, encoder_output_dim: int, embed_dim: int,
                         out_embed_dim: int) -> int:
    """Size of what the vocabulary projection reads: the deep output layer's ``--decoder-out-embed-dim`` where there
    is one, otherwise the family's output-layer input (``features_dim``). Tying the projection to an embedding
    needs this to equal the embedding's size."""
    features = DECODERS[attention_type].features_dim(hidden_size, encoder_output_dim, embed_dim)
    return projection_dim(out_embed_dim, features)


def build_decoder(attention_type: str, *args, **kwargs) -> GRUDecoder:
    """The decoder for ``--attention-type attention_type``."""
    return DECODERS[attention_type](*args, attention_type=attention_type, **kwargs)
