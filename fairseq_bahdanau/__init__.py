"""fairseq_bahdanau: the attention GRU encoder-decoder of Bahdanau et al. (2015) as a fairseq plugin.

Three parts, one sub-package each (docs/design.md, "Layout"):

* ``model``: the fairseq model (what ``--user-dir fairseq_bahdanau`` registers), its fairseq patches (``compat``)
  and its export to ONNX (``python -m fairseq_bahdanau.model.export``);
* ``deploy``: the exported translator run without torch or fairseq (ONNX Runtime, numpy, sentencepiece): the
  line filter and the HTTP service (``python -m fairseq_bahdanau.deploy.serve``). It imports nothing of ``model``;
* ``analysis``: tools around a trained model or its data (``plot_attention``, ``length_analysis``,
  ``synthetic``).

Importing the package registers the model and its architectures with fairseq and applies its fairseq patches,
whichever of the two is imported first: loaded by fairseq (``--user-dir``), or imported after fairseq, it
registers at once; imported before fairseq, it registers as soon as fairseq has been imported, and imports
neither fairseq nor torch itself until then. So ``deploy``, which needs neither, stays light, and
``import fairseq_bahdanau`` followed by ``fairseq.checkpoint_utils`` finds the model. :func:`register` does it
at once.
"""

import importlib.abc
import logging
import sys
from typing import Optional

__version__ = "0.2.0"


def register() -> None:
    """Apply the fairseq patches and register the model and its architectures (once; later calls do nothing):
    importing ``fairseq_bahdanau.model.bahdanau_gru`` does all three."""
    from .model import bahdanau_gru  # noqa: F401


def __getattr__(name: str):
    if name == "BahdanauGRUModel":
        register()
        from .model.bahdanau_gru import BahdanauGRUModel

        return BahdanauGRUModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _RegisterAfterImport(importlib.abc.Loader):
    """fairseq's own loader, then :func:`register` once fairseq's ``__init__`` has run."""

    def __init__(self, loader) -> None:
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        try:
            register()
        except Exception:  # noqa: BLE001 (fairseq itself must still import)
            logging.getLogger(__name__).exception(
                "fairseq_bahdanau could not register its model with fairseq; call fairseq_bahdanau.register() to "
                "see why")

    def __getattr__(self, name: str):  # the rest of the loader's interface (resources, get_data, ...)
        return getattr(self.loader, name)


class _WaitForFairseq(importlib.abc.MetaPathFinder):
    """On ``sys.meta_path`` while fairseq is not imported: finds fairseq with the finders after it, and hands its
    spec a loader that registers this package once fairseq is loaded. It leaves ``sys.meta_path`` at that moment."""

    def find_spec(self, name: str, path=None, target=None) -> Optional["importlib.machinery.ModuleSpec"]:
        if name != "fairseq":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(name, path, target) if find is not None else None
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _RegisterAfterImport(spec.loader)
                return spec
        return None


if sys.modules.get("fairseq") is not None:  # loaded by fairseq (--user-dir), or imported after fairseq
    register()
elif not any(isinstance(finder, _WaitForFairseq) for finder in sys.meta_path):
    sys.meta_path.insert(0, _WaitForFairseq())
