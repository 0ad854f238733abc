"""sentencepiece helpers for the Multi30k recipe: train a joint model, encode to pieces, decode pieces to text.

    python spm.py train MODEL_PREFIX VOCAB_SIZE FILE [FILE ...]
    python spm.py encode MODEL < text > pieces
    python spm.py sample MODEL SEED [NBEST ALPHA] < text > pieces
    python spm.py decode MODEL < pieces > text

``sample`` is subword regularization (Kudo 2018, arXiv:1804.10959, section 3.2, with its l = 64 and alpha = 0.1 as
defaults): each line's segmentation is drawn from its NBEST best segmentations x with probability proportional
to P(x)^ALPHA, P(x) the unigram model's probability. The draw uses Python's random with SEED, so the output is
the same on every run (sentencepiece's own sampling ignores its seed: google/sentencepiece#609, #635).
"""

import math
import random
import sys

import sentencepiece as spm


def main() -> None:
    command, model = sys.argv[1], sys.argv[2]
    if command not in ("train", "encode", "sample", "decode"):
        raise SystemExit(f"unknown command {command!r}: use train, encode, sample or decode")
    if command == "train":
        vocab_size, files = int(sys.argv[3]), sys.argv[4:]
        spm.SentencePieceTrainer.train(
            input=",".join(files), model_prefix=model, vocab_size=vocab_size, model_type="unigram",
            character_coverage=1.0, input_sentence_size=10_000_000, shuffle_input_sentence=True,
            bos_id=-1, eos_id=-1, pad_id=-1, unk_id=0, minloglevel=2,
        )
        return
    processor = spm.SentencePieceProcessor(model_file=model)
    if command == "sample":
        nbest, alpha = (int(sys.argv[4]), float(sys.argv[5])) if len(sys.argv) > 4 else (64, 0.1)
        sample(processor, random.Random(int(sys.argv[3])), nbest, alpha)
        return
    for line in sys.stdin:
        if command == "encode":
            sys.stdout.write(" ".join(processor.encode(line.rstrip("\n"), out_type=str)) + "\n")
        else:
            sys.stdout.write(processor.decode(line.split()) + "\n")


def sample(processor: spm.SentencePieceProcessor, rng: random.Random, nbest: int, alpha: float) -> None:
    """Write one sampled segmentation of every line of stdin to stdout (see the module docstring)."""
    log_prob = [processor.get_score(i) for i in range(processor.get_piece_size())]
    for line in sys.stdin:
        candidates = processor.nbest_encode_as_ids(line.rstrip("\n"), nbest)
        if not candidates:  # an empty line
            sys.stdout.write("\n")
            continue
        scores = [alpha * sum(log_prob[i] for i in ids) for ids in candidates]
        top = max(scores)
        ids = rng.choices(candidates, weights=[math.exp(s - top) for s in scores])[0]
        sys.stdout.write(" ".join(processor.id_to_piece(ids)) + "\n")


if __name__ == "__main__":
    main()
