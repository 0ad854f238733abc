#!/usr/bin/env bash
# A short end-to-end smoke (about a minute): a tiny corpus -> fairseq-preprocess -> fairseq-train (2 epochs of
# bahdanau_gru_tiny) -> fairseq-generate (beam 2) -> export -> serve, with the tools of one environment.
# .ci/run runs it on a second Python beside the full suite on the first.
#
#   bash tests/smoke.sh VENV        (an environment made by `make setup VENV=...`)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="$(cd "${1:?usage: smoke.sh VENV}" && pwd)"
export PATH="$VENV/bin:$PATH" PYTHONWARNINGS=ignore OMP_NUM_THREADS=1
DIR="$(mktemp -d)"
trap 'rm -rf "$DIR"' EXIT
step() { echo "smoke ($(python -c 'import platform; print(platform.python_version())')): $*"; }
step "corpus, preprocess"
python -m fairseq_bahdanau.analysis.synthetic "$DIR/raw" --train 600 --valid 50 --test 20 --seed 1 > /dev/null
fairseq-preprocess --source-lang src --target-lang tgt --trainpref "$DIR/raw/train" --validpref "$DIR/raw/valid" \
  --testpref "$DIR/raw/test" --destdir "$DIR/bin" --workers 1 > "$DIR/preprocess.log" 2>&1
step "train"
fairseq-train "$DIR/bin" --user-dir "$ROOT/fairseq_bahdanau" --arch bahdanau_gru_tiny --optimizer adam --lr 0.01 \
  --max-tokens 1000 --max-epoch 2 --cpu --num-workers 0 --save-dir "$DIR/ckpt" --no-epoch-checkpoints \
  --log-format simple > "$DIR/train.log" 2>&1 || { tail -20 "$DIR/train.log"; exit 1; }
step "generate"
fairseq-generate "$DIR/bin" --user-dir "$ROOT/fairseq_bahdanau" --path "$DIR/ckpt/checkpoint_best.pt" --beam 2 \
  --cpu --print-alignment > "$DIR/generate.out" 2> "$DIR/generate.log" || { tail -20 "$DIR/generate.log"; exit 1; }
[ "$(grep -c '^H-' "$DIR/generate.out")" = 20 ] || { echo "smoke: generate did not translate all 20 sentences"; exit 1; }
step "export"
python -m fairseq_bahdanau.model.export --path "$DIR/ckpt/checkpoint_best.pt" --data "$DIR/bin" \
  --output "$DIR/translator.onnx" > "$DIR/export.log" 2>&1 || { tail -20 "$DIR/export.log"; exit 1; }
step "serve"
python -m fairseq_bahdanau.deploy.serve "$DIR/translator.onnx" < "$DIR/raw/test.src" > "$DIR/served.txt"
[ "$(wc -l < "$DIR/served.txt")" = 20 ] || { echo "smoke: serve did not answer every line"; exit 1; }
step "passed"
