#!/usr/bin/env bash
# The demo: the reference's argument on a synthetic parallel corpus with word reordering and sentences of up to
# 49 words. The same tiny model is trained with attention (bahdanau_gru_tiny) and without it
# (--attention-type none: a fixed context vector, the paper's RNNencdec baseline), about a minute each on
# 2 CPU cores. Then: sacreBLEU, BLEU by source length for both (the paper's Figure 2, as a table and a PNG),
# a few translations with their alignments, and both models exported as translators for the page
# (`serve --port`). Needs only the package's environment (`make demo` sets it up).
# Work files go to $DEMO_DIR (default runs/demo).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
DIR="${DEMO_DIR:-$ROOT/runs/demo}"
USER_DIR="$ROOT/fairseq_bahdanau"
export PYTHONWARNINGS=ignore
rm -rf "$DIR" && mkdir -p "$DIR"

echo "== 1. synthetic corpus (verb-final source, verb-first target, adjective after noun; 2 to 49 words) -> $DIR/raw"
python -m fairseq_bahdanau.analysis.synthetic "$DIR/raw" --train 8000 --valid 300 --test 500 --seed 1 --max-phrases 24
paste -d '\n' <(head -2 "$DIR/raw/train.src" | sed 's/^/  src: /') <(head -2 "$DIR/raw/train.tgt" | sed 's/^/  tgt: /')

echo "== 2. fairseq-preprocess"
fairseq-preprocess --source-lang src --target-lang tgt \
  --trainpref "$DIR/raw/train" --validpref "$DIR/raw/valid" --testpref "$DIR/raw/test" \
  --destdir "$DIR/bin" --workers 2 > "$DIR/preprocess.log" 2>&1

train() {  # NAME, then extra fairseq-train flags
  local name="$1"; shift
  fairseq-train "$DIR/bin" --user-dir "$USER_DIR" --arch bahdanau_gru_tiny "$@" \
    --optimizer adam --lr 0.01 --clip-norm 1.0 --max-tokens 2000 --max-epoch 8 --seed 1 \
    --cpu --num-workers 0 --save-dir "$DIR/checkpoints/$name" --no-epoch-checkpoints \
    --log-format simple --log-interval 100 2>&1 | tee "$DIR/train.$name.log" \
    | grep --line-buffered -E "\| valid \| epoch" | sed -E 's/.*\| valid \| (epoch [0-9]+).*\| loss ([0-9.]+).*/  \1 valid loss \2/'
}
echo "== 3. fairseq-train --arch bahdanau_gru_tiny: with attention (the validation loss falls towards 0)"
train attention
echo "== 4. the same with --attention-type none: one fixed context vector for the whole sentence"
train encdec --attention-type none

echo "== 5. fairseq-generate --beam 5 on the test split (with attention also --print-alignment)"
fairseq-generate "$DIR/bin" --user-dir "$USER_DIR" --path "$DIR/checkpoints/attention/checkpoint_best.pt" \
  --beam 5 --batch-size 128 --cpu --print-alignment > "$DIR/generate.attention.out" 2> "$DIR/generate.attention.log"
fairseq-generate "$DIR/bin" --user-dir "$USER_DIR" --path "$DIR/checkpoints/encdec/checkpoint_best.pt" \
  --beam 5 --batch-size 128 --cpu > "$DIR/generate.encdec.out" 2> "$DIR/generate.encdec.log"
grep '^H-' "$DIR/generate.attention.out" | sort -t- -k2 -n | cut -f3 > "$DIR/test.hyp"
grep '^T-' "$DIR/generate.attention.out" | sort -t- -k2 -n | cut -f2 > "$DIR/test.ref"

echo "== 6. sacreBLEU of the attention model on the test split ($(wc -l < "$DIR/test.hyp") sentences)"
sacrebleu "$DIR/test.ref" -i "$DIR/test.hyp" -m bleu -w 2

echo "== 7. BLEU by source sentence length (Bahdanau et al. 2015, Figure 2)"
python -m fairseq_bahdanau.analysis.length_analysis --source "$DIR/raw/test.src" --reference "$DIR/raw/test.tgt" \
  --system "attention=$DIR/generate.attention.out" --system "encdec=$DIR/generate.encdec.out" \
  --plot "$DIR/bleu_by_length.png" --title "synthetic reordering task: attention vs a fixed context" 2> /dev/null

echo "== 8. a few translations with their alignments (source word -> target word)"
python "$HERE/show_alignments.py" "$DIR/generate.attention.out" 3

echo "== 9. both models exported as ONNX translators (ONNX Runtime + numpy, no torch) -> $DIR/attention.onnx, $DIR/encdec.onnx"
for name in attention encdec; do
  python -m fairseq_bahdanau.model.export --path "$DIR/checkpoints/$name/checkpoint_best.pt" --data "$DIR/bin" \
    --source-lang src --target-lang tgt --output "$DIR/$name.onnx" > "$DIR/export.$name.log" 2>&1 \
    || { tail -20 "$DIR/export.$name.log"; exit 1; }
done
echo "  the page, side by side:  python -m fairseq_bahdanau.deploy.serve --port 8000 $DIR/attention.onnx $DIR/encdec.onnx"
echo "                           then open http://127.0.0.1:8000/ and paste a line of $DIR/raw/test.src"
