#!/usr/bin/env bash
# Step 1 of the Multi30k (task 1, de-en) recipe: raw data -> joint sentencepiece -> fairseq-preprocess.
#
#   MULTI30K_DIR=../shared/data/multi30k bash examples/multi30k/prepare.sh      # local raw copy
#   bash examples/multi30k/prepare.sh                                           # download from multi30k/dataset
#
# Env: MULTI30K_DIR (raw train/valid/test2016 .de/.en; default: download), WORK (default runs/multi30k),
#      VOCAB (joint sentencepiece vocabulary, default 8000), SAMPLES (sampled segmentations of the training
#      split for train.sh best-sr's subword regularization, default 0: none; 20 took 7 minutes here).
# Writes $WORK/raw, $WORK/spm.model, $WORK/pieces, $WORK/data-bin, and $WORK/data-bin-sampled/1..SAMPLES: the
# training split only, each with its own segmentation drawn from the 64 best (Kudo 2018; spm.py sample), binarized
# with data-bin's dictionary. train.sh best-sr trains on data-bin in epoch 1 and on sample k in epoch k + 1.
# A re-run rebuilds data-bin and removes an earlier data-bin-sampled (binarized with the earlier dictionary).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
WORK="${WORK:-$ROOT/runs/multi30k}"
VOCAB="${VOCAB:-8000}"
SAMPLES="${SAMPLES:-0}"
URL="https://github.com/multi30k/dataset/raw/master/data/task1/raw"
HERE="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$WORK/raw" "$WORK/pieces"

echo "== raw data -> $WORK/raw"
if [ -n "${MULTI30K_DIR:-}" ]; then
  for split in train valid test2016; do
    for lang in de en; do
      [ -f "$MULTI30K_DIR/$split.$lang" ] || { echo "error: missing $MULTI30K_DIR/$split.$lang" >&2; exit 1; }
      cp "$MULTI30K_DIR/$split.$lang" "$WORK/raw/$split.$lang"
    done
  done
else
  for pair in train:train valid:val test2016:test_2016_flickr; do
    split="${pair%%:*}"; remote="${pair##*:}"
    for lang in de en; do
      curl -fsSL "$URL/$remote.$lang.gz" | gunzip > "$WORK/raw/$split.$lang" \
        || { echo "error: could not download $URL/$remote.$lang.gz (set MULTI30K_DIR to a local copy)" >&2; exit 1; }
    done
  done
fi

echo "== checking line counts"
for pair in train:29000 valid:1014 test2016:1000; do
  split="${pair%%:*}"; want="${pair##*:}"
  de=$(wc -l < "$WORK/raw/$split.de"); en=$(wc -l < "$WORK/raw/$split.en")
  if [ "$de" -ne "$en" ]; then echo "error: $split is misaligned: $de German lines, $en English lines" >&2; exit 1; fi
  if [ "$de" -ne "$want" ]; then echo "error: $split has $de lines, expected $want" >&2; exit 1; fi
  echo "  $split: $de sentence pairs"
done

echo "== joint sentencepiece (unigram, $VOCAB) on the training split only"
python "$HERE/spm.py" train "$WORK/spm" "$VOCAB" "$WORK/raw/train.de" "$WORK/raw/train.en"
for split in train valid test2016; do
  for lang in de en; do
    python "$HERE/spm.py" encode "$WORK/spm.model" < "$WORK/raw/$split.$lang" > "$WORK/pieces/$split.$lang"
  done
done

echo "== fairseq-preprocess (joined dictionary) -> $WORK/data-bin"
rm -rf "$WORK/data-bin"
fairseq-preprocess --source-lang de --target-lang en --joined-dictionary \
  --trainpref "$WORK/pieces/train" --validpref "$WORK/pieces/valid" --testpref "$WORK/pieces/test2016" \
  --destdir "$WORK/data-bin" --workers 2 > "$WORK/preprocess.log" 2>&1 \
  || { tail -20 "$WORK/preprocess.log" >&2; exit 1; }
grep -E "replaced" "$WORK/preprocess.log" | sed 's/^.*INFO:fairseq_cli.preprocess:/  /' || true

rm -rf "$WORK/data-bin-sampled"
if [ "$SAMPLES" -gt 0 ]; then
  echo "== $SAMPLES sampled segmentations of the training split -> $WORK/data-bin-sampled"
  for k in $(seq 1 "$SAMPLES"); do
    seed=$(( 2 * k ))  # a seed per sample and side: the same samples on every run
    for lang in de en; do
      python "$HERE/spm.py" sample "$WORK/spm.model" "$seed" < "$WORK/raw/train.$lang" \
        > "$WORK/pieces/train.sampled.$lang"
      seed=$(( seed + 1 ))
    done
    fairseq-preprocess --source-lang de --target-lang en --srcdict "$WORK/data-bin/dict.de.txt" \
      --tgtdict "$WORK/data-bin/dict.en.txt" --trainpref "$WORK/pieces/train.sampled" \
      --destdir "$WORK/data-bin-sampled/$k" --workers 2 > "$WORK/preprocess.sampled.log" 2>&1 \
      || { tail -20 "$WORK/preprocess.sampled.log" >&2; exit 1; }
  done
  rm -f "$WORK/pieces/train.sampled."{de,en}
  grep -E "replaced" "$WORK/preprocess.sampled.log" | sed "s/^.*INFO:fairseq_cli.preprocess:/  sample $SAMPLES: /" || true
fi
echo "done: $WORK/data-bin"
