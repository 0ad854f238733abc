"""``python -m fairseq_bahdanau.analysis.length_analysis``: BLEU by source length, table and figure, for two small
systems."""

import random
import re

import matplotlib.image
import pytest

from fairseq_bahdanau.analysis import length_analysis
from helpers import ROOT, run


@pytest.fixture
def systems(tmp_path):
    """300 sentences of 1 to 45 words; "perfect" repeats the references, "fading" drops the second half of every
    reference longer than 20 words (as a fixed-vector model loses the end of long sentences); "fading" is written
    as fairseq-generate output, in a shuffled order."""
    rng = random.Random(0)
    vocabulary = [f"w{i}" for i in range(300)]
    sources, references = [], []
    for _ in range(300):
        n = rng.choice(range(1, 46)) if rng.random() < 0.8 else rng.choice(range(1, 11))
        sources.append(" ".join(rng.choice(vocabulary) for _ in range(n)))
        references.append(" ".join(rng.choice(vocabulary).upper() for _ in range(n)))
    fading = [r if len(r.split()) <= 20 else " ".join(r.split()[: len(r.split()) // 2]) for r in references]
    (tmp_path / "src").write_text("\n".join(sources) + "\n")
    (tmp_path / "ref").write_text("\n".join(references) + "\n")
    (tmp_path / "perfect").write_text("\n".join(references) + "\n")
    order = list(range(300))
    rng.shuffle(order)
    lines = []
    for i in order:
        lines += [f"S-{i}\t{sources[i]}", f"H-{i}\t-0.5\t{fading[i].lower()}", f"D-{i}\t-0.5\t{fading[i]}",
                  f"P-{i}\t-0.1 -0.2"]
    (tmp_path / "fading.out").write_text("\n".join(lines) + "\nGenerate test with beam=5: BLEU4 = 1.0\n")
    return tmp_path, sources


def test_table_and_figure_for_two_systems(systems):
    root, _ = systems
    figure = root / "bleu_by_length.png"
    out = run("python", "-m", "fairseq_bahdanau.analysis.length_analysis", "--source", str(root / "src"), "--reference",
              str(root / "ref"), "--system", f"perfect={root / 'perfect'}", "--system", f"fading={root / 'fading.out'}",
              "--bootstrap", "50", "--plot", str(figure), cwd=ROOT).stdout
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| source")]
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    assert cells[-1][:2] == ["all", "300"]
    assert sum(int(c[1]) for c in cells[:-1]) == 300
    for label, _count, perfect, fading in cells[:-1]:
        assert perfect.startswith("100.00")
        high = int(label.split()[0].split("-")[1])
        if high <= 20:
            assert fading.startswith("100.00"), (label, fading)
        else:
            assert float(fading.split()[0]) < 60, (label, fading)
            low, up = fading.split()[1].strip("()").split("-")
            assert float(low) <= float(fading.split()[0]) <= float(up)
    assert "nrefs:1|case:mixed" in out and f"figure: {figure}" in out
    assert figure.read_bytes().startswith(b"\x89PNG")
    image = matplotlib.image.imread(str(figure))
    assert image.shape[0] > 200 and image.shape[1] > 300


def test_buckets_with_too_few_sentences_are_merged_not_plotted_alone():
    lengths = [3] * 40 + [12] * 5 + [25] * 40 + [38] * 3 + [47] * 2
    rows = length_analysis.buckets(lengths, width=10, min_sentences=30)
    # 11-20 (5 sentences) joins 21-30; 31-40 and 41-50 (5 in all) are too few and join the bucket before them
    assert [(b.low, b.high, len(b.indices), b.merged) for b in rows] == [(1, 10, 40, False), (11, 50, 50, True)]
    assert sorted(i for b in rows for i in b.indices) == list(range(len(lengths)))


def test_fairseq_generate_output_missing_a_sentence_is_named(tmp_path):
    (tmp_path / "gen.out").write_text("H-0\t-0.1\ta b\nH-2\t-0.1\tc\n")
    with pytest.raises(ValueError, match="without hypotheses for 1 of 3 sentences"):
        length_analysis.read_system(str(tmp_path / "gen.out"), 3)
    (tmp_path / "plain.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match="2 lines, but the reference has 3"):
        length_analysis.read_system(str(tmp_path / "plain.txt"), 3)


@pytest.mark.parametrize("lowercase", [False, True], ids=["cased", "lowercased"])
def test_bleu_from_sentence_statistics_equals_sacrebleu(lowercase):
    """The bootstrap's BLEU (sums of per-sentence statistics) is sacreBLEU's corpus BLEU of the same selection,
    sentences drawn twice and an empty hypothesis included, cased and lowercased."""
    import sacrebleu

    references = ["A man rides a Horse .", "Two dogs play in the snow .", "A woman is singing .", "Kids ."]
    hypotheses = ["a man rides a horse .", "Two dogs are playing in snow .", "", "Kids ."]
    statistics = length_analysis.sentence_statistics(hypotheses, references, lowercase)
    for indices in [0, 1, 2, 3], [1, 1, 0, 2], [3, 0, 0]:
        expected = sacrebleu.corpus_bleu([hypotheses[i] for i in indices], [[references[i] for i in indices]],
                                         lowercase=lowercase).score
        assert length_analysis.corpus_bleu(statistics, indices) == pytest.approx(expected, abs=1e-9)
    assert length_analysis.corpus_bleu(statistics, [0]) != length_analysis.corpus_bleu(
        length_analysis.sentence_statistics(hypotheses, references, not lowercase), [0])  # the case matters


def test_plain_text_whose_lines_start_with_h_or_d_is_not_taken_for_fairseq_generate_output(tmp_path):
    """Only ``H-<id>\\t``/``D-<id>\\t`` lines (integer id, then a tab) make a file fairseq-generate output."""
    plain = ["H-bomb tests were banned.", "D-Day was in June.", "H-1 is a road", "D-3 minus one"]
    (tmp_path / "plain.txt").write_text("\n".join(plain) + "\n")
    assert length_analysis.read_system(str(tmp_path / "plain.txt"), 4) == plain
    # generate output: the D- lines (whose text may itself start with "D-"), in id order; untagged lines ignored
    (tmp_path / "gen.out").write_text("S-1\tx\nH-1\t-0.2\td-day\nD-1\t-0.2\tD-Day\nH-0\t-0.1\th-bomb\n"
                                      "D-0\t-0.1\tH-bomb\nGenerate test with beam=5: BLEU4 = 1.0\n")
    assert length_analysis.read_system(str(tmp_path / "gen.out"), 2) == ["H-bomb", "D-Day"]


def test_an_empty_last_sentence_is_kept_in_source_reference_and_system(tmp_path, capsys):
    """Sources, references and plain-text systems are read alike: a final newline ends the last line, an empty
    line before it is an (empty) sentence in every file, so the counts agree."""
    (tmp_path / "src").write_text("ein Hund\nzwei Katzen\n\n")
    (tmp_path / "ref").write_text("a dog runs home\ntwo cats sit on a mat\n\n")
    (tmp_path / "sys").write_text("a dog runs home\ntwo cats sit on a mat\n\n")
    length_analysis.main(["--source", str(tmp_path / "src"), "--reference", str(tmp_path / "ref"),
                          "--system", f"s={tmp_path / 'sys'}", "--min-sentences", "1"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| all")]
    assert rows == ["| all | 3 | 100.00 |"]
    for name, text in [("src", "ein Hund\nzwei Katzen\n"), ("src-crlf", "ein Hund\r\nzwei Katzen\r\n\r\n")]:
        (tmp_path / name).write_text(text, newline="")
        assert len(length_analysis.read_lines(str(tmp_path / name))) == text.count("\n")


def test_line_count_mismatches_name_the_files_and_both_counts(tmp_path):
    (tmp_path / "src").write_text("a\nb\nc\n")
    (tmp_path / "ref").write_text("a\nb\n")
    (tmp_path / "sys").write_text("a\n")
    message = f"the source {tmp_path / 'src'} has 3 lines, but the reference {tmp_path / 'ref'} has 2"
    with pytest.raises(SystemExit, match=re.escape(message)):
        length_analysis.main(["--source", str(tmp_path / "src"), "--reference", str(tmp_path / "ref"),
                              "--system", f"s={tmp_path / 'sys'}"])
    (tmp_path / "src").write_text("a\nb\n")
    message = f"{tmp_path / 'sys'}: 1 lines, but the reference {tmp_path / 'ref'} has 2"
    with pytest.raises(SystemExit, match=re.escape(message)):
        length_analysis.main(["--source", str(tmp_path / "src"), "--reference", str(tmp_path / "ref"),
                              "--system", f"s={tmp_path / 'sys'}"])


def test_only_public_sacrebleu_api_is_used():
    """setup.py allows any sacrebleu >= 2.0: the module may not rely on its private (underscored) methods."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(length_analysis))
    private = sorted({node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
                      and node.attr.startswith("_") and not node.attr.startswith("__")})
    assert private == []
    imported = {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any(name.split(".")[0] == "fairseq" for name in imported)


def test_sentence_statistics_log_no_warning_per_sentence(caplog):
    """The per-sentence statistics come from ``sentence_score``, which warns on every call unless the metric
    uses ``effective_order`` (which does not change the statistics)."""
    with caplog.at_level("WARNING"):
        statistics = length_analysis.sentence_statistics(["a b c d", "e f"], ["a b c d", "e g"], False)
    assert statistics == [[4, 4, 4, 3, 2, 1, 4, 3, 2, 1], [2, 2, 1, 0, 0, 0, 2, 1, 0, 0]]
    assert caplog.records == []
