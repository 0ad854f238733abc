"""The deployment runtime: exported translators (``fairseq_bahdanau.export``) run with ONNX Runtime, numpy and
sentencepiece alone. Nothing here imports torch or fairseq, nor anything of the package's training side.

* ``files``: the translator folder (or a zip archive of it): what it holds and how it is read;
* ``search``: fairseq's beam search, in numpy;
* ``translator``: the graphs in ONNX Runtime sessions, and the tokens around them (dictionaries);
* ``text``: text in and out (sentencepiece), n-best lists and attention over words: what ``serve`` (the line
  filter) and ``service`` (HTTP) share.
"""
