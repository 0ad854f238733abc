"""The exported translator on disk: a folder (``translator.onnx/``), or a zip archive of the folder's files.

``translator.json`` (``META_FILE``) says what the folder holds (its ``format`` is ``FORMAT``): for each model of
the ensemble its two graphs and its decoder family, the dictionaries, the generation options; beside it the
graphs and ``sentencepiece.model`` (``SPM_FILE``) where the data was segmented with one.
"""

import json
import os
import zipfile
from typing import Any, Dict, Optional

META_FILE = "translator.json"
SPM_FILE = "sentencepiece.model"
#: the format written by ``fairseq_bahdanau.model.export``; a file in another format is refused with a clear message
FORMAT = "fairseq_bahdanau.onnx/2"

REEXPORT = ("export it again with this version: python -m fairseq_bahdanau.model.export --path CHECKPOINT --data DATA "
            "[--spm SPM] --output translator.onnx")


class TranslatorFiles:
    """The files of a translator folder or archive, read by name."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._zip: Optional[zipfile.ZipFile] = None
        self._prefix = ""
        if os.path.isdir(path):
            if not os.path.isfile(os.path.join(path, META_FILE)):
                raise ValueError(f"{path} is a folder but not a translator written by fairseq_bahdanau.model.export "
                                 f"(it has no {META_FILE})")
        elif os.path.isfile(path):
            if not zipfile.is_zipfile(path):
                raise ValueError(f"{path} is not a translator written by fairseq_bahdanau.model.export (neither a "
                                 "translator folder nor a zip archive of one)")
            self._zip = zipfile.ZipFile(path)
            names = self._zip.namelist()
            if META_FILE not in names:
                candidates = [n for n in names if n.endswith("/" + META_FILE)]
                if any("/extra/" in n for n in candidates) or any(n.endswith("/constants.pkl") for n in names):
                    raise ValueError(f"{path} is a TorchScript translator from an earlier version of "
                                     f"fairseq_bahdanau, which this version no longer runs: {REEXPORT}")
                if len(candidates) == 1:  # an archive of the folder itself
                    self._prefix = candidates[0][: -len(META_FILE)]
                else:
                    raise ValueError(f"{path} is a zip archive but not a translator written by "
                                     f"fairseq_bahdanau.model.export (it has no {META_FILE})")
        else:
            raise ValueError(f"no translator at {path}")

    def read(self, name: str) -> bytes:
        if self._zip is not None:
            return self._zip.read(self._prefix + name)
        with open(os.path.join(self.path, name), "rb") as f:
            return f.read()

    def has(self, name: str) -> bool:
        if self._zip is not None:
            return (self._prefix + name) in self._zip.namelist()
        return os.path.isfile(os.path.join(self.path, name))

    def meta(self) -> Dict[str, Any]:
        try:
            meta = json.loads(self.read(META_FILE))
        except (ValueError, UnicodeDecodeError) as error:
            raise ValueError(f"{self.path}: {META_FILE} is not valid JSON ({error})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else None
            raise ValueError(f"{self.path} is a translator of another format ({found!r}, this version reads "
                             f"{FORMAT!r}): {REEXPORT}")
        return meta
