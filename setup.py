from setuptools import setup

setup(
    name="fairseq_bahdanau",
    version="0.1.0",
    description="The attention GRU encoder-decoder of Bahdanau et al. (2015) as a fairseq plugin (--user-dir)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    packages=["fairseq_bahdanau"],
    python_requires=">=3.8",
    install_requires=[
        # torch is pinned by the Makefile's constraints.txt to the CPU build; any torch fairseq accepts works.
        "torch>=1.13",
        'fairseq==0.12.2; python_version < "3.11"',
        'fairseq-fixed==0.12.3.1; python_version >= "3.11"',
        "sentencepiece",
        "sacrebleu>=2.0",
    ],
    extras_require={
        "test": ["pytest"],
        "plot": ["matplotlib"],
    },
)
