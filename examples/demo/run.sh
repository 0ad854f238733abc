#!/usr/bin/env bash
# The demo: a synthetic parallel corpus with word reordering -> fairseq-preprocess -> fairseq-train
# (bahdanau_gru_tiny, about a minute on 2 CPU cores) -> fairseq-generate -> sacreBLEU and a few alignments.
# Needs only the package's environment (`make demo` sets it up). Work files go to $DEMO_DIR (default runs/demo).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
DIR="${DEMO_DIR:-$ROOT/runs/demo}"
USER_DIR="$ROOT/fairseq_bahdanau"
export PYTHONWARNINGS=ignore
rm -rf "$DIR" && mkdir -p "$DIR"

echo "== 1. synthetic corpus (verb-final source, verb-first target, adjective after noun) -> $DIR/raw"
python -m fairseq_bahdanau.synthetic "$DIR/raw" --train 8000 --valid 300 --test 300 --seed 1
paste -d '\n' <(head -2 "$DIR/raw/train.src" | sed 's/^/  src: /') <(head -2 "$DIR/raw/train.tgt" | sed 's/^/  tgt: /')

echo "== 2. fairseq-preprocess"
fairseq-preprocess --source-lang src --target-lang tgt \
  --trainpref "$DIR/raw/train" --validpref "$DIR/raw/valid" --testpref "$DIR/raw/test" \
  --destdir "$DIR/bin" --workers 2 > "$DIR/preprocess.log" 2>&1

echo "== 3. fairseq-train --arch bahdanau_gru_tiny (progress below: loss falls towards 0)"
fairseq-train "$DIR/bin" --user-dir "$USER_DIR" --arch bahdanau_gru_tiny \
  --optimizer adam --lr 0.01 --clip-norm 1.0 --max-tokens 800 --max-epoch 12 --seed 1 \
  --cpu --num-workers 0 --save-dir "$DIR/checkpoints" --no-epoch-checkpoints \
  --log-format simple --log-interval 50 2>&1 | tee "$DIR/train.log" \
  | grep --line-buffered -E "\| (train|valid) \| epoch" | sed -E 's/.*\| (train|valid) \| (epoch [0-9]+).*\| loss ([0-9.]+).*/  \2 \1 loss \3/'

echo "== 4. fairseq-generate --beam 5 --print-alignment on the test split"
fairseq-generate "$DIR/bin" --user-dir "$USER_DIR" --path "$DIR/checkpoints/checkpoint_best.pt" \
  --beam 5 --batch-size 128 --cpu --print-alignment > "$DIR/generate.out" 2> "$DIR/generate.log"
grep '^H-' "$DIR/generate.out" | sort -t- -k2 -n | cut -f3 > "$DIR/test.hyp"
grep '^T-' "$DIR/generate.out" | sort -t- -k2 -n | cut -f2 > "$DIR/test.ref"

echo "== 5. sacreBLEU on the test split ($(wc -l < "$DIR/test.hyp") sentences)"
sacrebleu "$DIR/test.ref" -i "$DIR/test.hyp" -m bleu -w 2

echo "== 6. a few translations with their alignments (source word -> target word)"
python "$HERE/show_alignments.py" "$DIR/generate.out" 3
