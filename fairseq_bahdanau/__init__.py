"""fairseq_bahdanau: the attention GRU encoder-decoder of Bahdanau et al. (2015) as a fairseq plugin.

Loaded by fairseq as ``--user-dir`` (fairseq is imported by then), the package registers the model and its
architectures and applies its fairseq patches (``compat``). Imported before fairseq, or where fairseq is not
installed, it imports nothing: the tools (``serve``, ``length_analysis``, ``synthetic``) load only what they use.
A program that imports this package before fairseq registers the model with :func:`register` (as ``export`` and
``plot_attention`` do), or by importing :class:`BahdanauGRUModel` from it.
"""

import sys

__version__ = "0.2.0"


def register() -> None:
    """Apply the fairseq patches and register the model and its architectures (once; later calls do nothing):
    importing ``fairseq_bahdanau.model`` does all three."""
    from . import model  # noqa: F401


def __getattr__(name: str):
    if name == "BahdanauGRUModel":
        register()
        from .model import BahdanauGRUModel

        return BahdanauGRUModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if sys.modules.get("fairseq") is not None:  # loaded by fairseq (--user-dir), or by a program that uses fairseq
    register()
