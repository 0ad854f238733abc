"""sentencepiece helpers for the Multi30k recipe: train a joint model, encode to pieces, decode pieces to text.

    python spm.py train MODEL_PREFIX VOCAB_SIZE FILE [FILE ...]
    python spm.py encode MODEL < text > pieces
    python spm.py decode MODEL < pieces > text
"""

import sys

import sentencepiece as spm


def main() -> None:
    command, model = sys.argv[1], sys.argv[2]
    if command == "train":
        vocab_size, files = int(sys.argv[3]), sys.argv[4:]
        spm.SentencePieceTrainer.train(
            input=",".join(files), model_prefix=model, vocab_size=vocab_size, model_type="unigram",
            character_coverage=1.0, input_sentence_size=10_000_000, shuffle_input_sentence=True,
            bos_id=-1, eos_id=-1, pad_id=-1, unk_id=0, minloglevel=2,
        )
        return
    processor = spm.SentencePieceProcessor(model_file=model)
    for line in sys.stdin:
        if command == "encode":
            sys.stdout.write(" ".join(processor.encode(line.rstrip("\n"), out_type=str)) + "\n")
        elif command == "decode":
            sys.stdout.write(processor.decode(line.split()) + "\n")
        else:
            raise SystemExit(f"unknown command {command!r}: use train, encode or decode")


if __name__ == "__main__":
    main()
