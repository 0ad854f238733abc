"""The deployment side: exported translators (``fairseq_bahdanau.model.export``) run with ONNX Runtime, numpy and
sentencepiece alone. Nothing here imports torch or fairseq, nor anything of ``fairseq_bahdanau.model``
(``tests/test_export.py`` checks it in a process of its own).

* ``files``: the translator folder (or a zip archive of it): what it holds and how it is read;
* ``search``: fairseq's beam search, in numpy;
* ``translator``: the graphs in ONNX Runtime sessions, and the tokens around them (dictionaries);
* ``text``: text in and out (sentencepiece), n-best lists and attention over words: what ``serve`` (the line
  filter) and ``service`` (HTTP) share;
* ``serve``: the line filter and the command (``python -m fairseq_bahdanau.deploy.serve``, ``--port`` for HTTP);
* ``service``: the HTTP service and its page (``static/``).
"""
