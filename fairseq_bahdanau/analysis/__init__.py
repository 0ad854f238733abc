"""Tools around a trained model or its data, each a ``python -m`` command: ``plot_attention`` (attention
matrices), ``length_analysis`` (BLEU by source length, the paper's Figure 2) and ``synthetic`` (a generated
corpus for tests and benchmarks)."""
