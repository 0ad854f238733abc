"""``python -m fairseq_bahdanau.analysis.plot_attention`` and ``attention_matrix``, on a tiny model trained on the
synthetic reordering task."""

import io
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest

from fairseq_bahdanau.analysis.plot_attention import attention_matrix, load_hub, parse_args
from helpers import ROOT, TRAIN, USER_DIR, run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained(synthetic):
    """(data-bin directory, checkpoint path, 20 test source sentences) of the shared trained tiny model."""
    return synthetic.bin, synthetic.best, (synthetic.raw / "test.src").read_text().splitlines()[:20]


def test_command_line_writes_a_png(trained, tmp_path):
    data, checkpoint, sources = trained
    output = tmp_path / "attention.png"
    # run from the checkout so that ``-m fairseq_bahdanau...`` finds the package
    out = run("python", "-m", "fairseq_bahdanau.analysis.plot_attention", "--path", str(checkpoint),
              "--data", str(data), "--beam", "5", "--output", str(output), sources[0], cwd=ROOT)
    # stdout holds the translation and nothing else (target words are upper case in the synthetic task)
    lines = out.stdout.splitlines()
    assert len(lines) == 1 and lines[0].split() and lines[0].isupper(), out.stdout
    content = output.read_bytes()
    assert content.startswith(PNG_SIGNATURE)
    assert len(content) > 5000
    image = matplotlib.image.imread(str(output))
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100 and image.shape[2] in (3, 4)


def test_a_model_without_attention_gets_a_message(trained, tmp_path):
    """--attention-type none (the demo's encdec): a message and exit status 1, not a TypeError."""
    data, _, sources = trained
    run("fairseq-train", str(data), "--user-dir", USER_DIR, "--arch", "bahdanau_gru_tiny", "--attention-type",
        "none", "--max-epoch", "1", "--save-dir", str(tmp_path / "encdec"), *TRAIN)
    proc = subprocess.run([sys.executable, "-m", "fairseq_bahdanau.analysis.plot_attention", "--path",
                           str(tmp_path / "encdec" / "checkpoint_best.pt"), "--data", str(data), "--output",
                           str(tmp_path / "a.png"), sources[0]], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1 and "has no attention to plot" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "a.png").exists()


def test_the_sentence_can_come_from_stdin(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n kalo bemu suna \n\n"))
    args = parse_args(["--path", "c.pt", "--data", "bin", "--output", "a.png", "-"])
    assert args.sentence == "kalo bemu suna" and args.beam == 5 and args.spm is None
    monkeypatch.setattr(sys, "stdin", io.StringIO("one\ntwo\n"))
    with pytest.raises(SystemExit):
        parse_args(["--path", "c.pt", "--data", "bin", "--output", "a.png", "-"])


def test_attention_matrix_finds_the_moved_verb(trained):
    data, checkpoint, sources = trained
    hub = load_hub(str(checkpoint), str(data), source_lang="src", target_lang="tgt")
    for sentence in sources:
        source, target, weights = attention_matrix(hub, sentence, beam=5)
        assert source == sentence.split() + ["</s>"]
        assert len(target) > 1 and target[-1] == "</s>"
        assert weights.shape == (len(target), len(source))
        np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-5)
        # The first target word is the verb, the last source word (compared over the words: fairseq's hard
        # alignments also leave out the source </s>, where an RNN encoder's sentence summary draws weight too).
        assert weights[0, :-1].argmax() == len(source) - 2, (sentence, target, weights[0].round(2))
