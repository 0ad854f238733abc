"""The Multi30k recipe's sentencepiece helper (``examples/multi30k/spm.py``): the sampled segmentations of
subword regularization are true segmentations of each line, vary, and are the same for the same seed."""

import os

import pytest

from fairseq_bahdanau.synthetic import write_corpus
from helpers import ROOT, run

SPM = os.path.join(ROOT, "examples", "multi30k", "spm.py")


def spm(*args: str, stdin: str) -> str:
    """stdout of ``python spm.py ARGS < stdin``."""
    return run("python", SPM, *args, stdin=stdin).stdout


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """(sentencepiece model path, 200 lines of text) for a small unigram model trained on the synthetic corpus."""
    root = tmp_path_factory.mktemp("spm")
    write_corpus(str(root / "raw"), train=500, valid=10, test=10, seed=5)
    spm("train", str(root / "m"), "100", str(root / "raw/train.src"), str(root / "raw/train.tgt"), stdin="")
    lines = (root / "raw/train.src").read_text().splitlines()[:199] + [""]  # an empty line too
    return str(root / "m.model"), "\n".join(lines) + "\n"


def test_samples_are_segmentations_of_each_line(model):
    path, text = model
    viterbi = spm("encode", path, stdin=text).splitlines()
    sampled = spm("sample", path, "1", stdin=text).splitlines()
    assert len(sampled) == len(viterbi) == 200
    assert sampled[-1] == ""
    # every sample decodes to its line, as the usual segmentation does
    assert spm("decode", path, stdin="\n".join(sampled) + "\n") == spm("decode", path, stdin="\n".join(viterbi) + "\n")
    changed = sum(s != v for s, v in zip(sampled, viterbi))
    assert changed > 50, changed
    # the usual segmentation is the most probable one, so samples are longer on average, not shorter
    assert sum(len(s.split()) for s in sampled) > sum(len(v.split()) for v in viterbi)


def test_samples_depend_on_the_seed_only(model):
    path, text = model
    first = spm("sample", path, "1", stdin=text)
    assert spm("sample", path, "1", stdin=text) == first
    assert spm("sample", path, "2", stdin=text) != first
    # alpha -> 0 samples uniformly from the 64 best; a large alpha gives the usual segmentation
    assert spm("sample", path, "1", "64", "50", stdin=text) == spm("encode", path, stdin=text)
