"""The fairseq model: ``bahdanau_gru`` and its named architectures, what they are made of, fairseq's patches and
the export to ONNX. Importing this sub-package alone registers nothing (``fairseq_bahdanau.register`` does):

* ``bahdanau_gru``: the model (registration), ``architectures`` (the named ones), ``config`` (its options);
* ``encoder``, ``encoder_out`` (what the encoder hands the decoder, and the beam-row protocol), ``decoder``
  (one module per decoder family), ``attention``, ``gru``, ``dropout``, ``deferred`` (gradients of what every
  step reads), ``precision`` (bfloat16 autocast);
* ``compat``: fairseq's patches;
* ``export`` and ``graphs``: the model as ONNX graphs, for ``fairseq_bahdanau.deploy``.
"""
