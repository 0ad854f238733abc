"""fairseq_bahdanau: the attention GRU encoder-decoder of Bahdanau et al. (2015) as a fairseq plugin.

Importing the package registers the model and its architectures (use ``--user-dir`` with fairseq's tools). Where
fairseq is not installed (a deployment of an exported translator: ``fairseq_bahdanau.serve``), it registers nothing.
"""

import importlib.util

if importlib.util.find_spec("fairseq") is not None:
    from . import compat  # noqa: F401  (checkpoint loading under torch >= 2.6)
    from . import model, architectures  # noqa: F401  (registration: the model before its architectures)
    from .model import BahdanauGRUModel  # noqa: F401

__version__ = "0.1.0"
