#!/usr/bin/env bash
# Sequence-level knowledge distillation (Kim & Rush 2016) on Multi30k: a teacher (one run or an ensemble of runs)
# translates the training source with beam search, and a student trains on its translations.
#
#   bash examples/multi30k/distill.sh TEACHER_RUN [MORE_TEACHER_RUNS ...]
#
# Step 1 translates $WORK/data-bin's training split with evaluate.sh (each run averaged or chosen as evaluate.sh
# does for CONFIG; more runs make an ensemble). Its pieces are kept in $WORK/checkpoints/RUN+.../train.beamB.pieces
# and reused by a later call (e.g. with MIX=1) only if they are complete and were made from the same checkpoint
# files (names and times), sentencepiece model, CONFIG, AVERAGE and LENPEN (recorded in train.beamB.key).
# Step 2 binarizes them with data-bin's dictionary into DEST (valid and test stay the references), for
#
#   DATA_BIN=DEST RUN_NAME=student-of-TEACHER bash examples/multi30k/train.sh best   (a RUN_NAME not used
#   RUN_NAME=student-of-TEACHER bash examples/multi30k/evaluate.sh best      before: train.sh resumes a run
#                                                                            directory that exists)
#
# Env: WORK (default runs/multi30k), CONFIG (the teacher runs' configuration, default best), BEAM (5),
#      MIX (0: the teacher's translations only; 1: translations and references together, two pairs per source
#      sentence), DEST (default $WORK/data-bin-distill, or $WORK/data-bin-distill-mix with MIX=1).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
HERE="$(cd "$(dirname "$0")" && pwd)"
WORK="${WORK:-$ROOT/runs/multi30k}"
CONFIG="${CONFIG:-best}"
BEAM="${BEAM:-5}"
MIX="${MIX:-0}"
[ $# -gt 0 ] || { echo "usage: distill.sh TEACHER_RUN [MORE_TEACHER_RUNS ...]" >&2; exit 1; }
case "$MIX" in 0) SUFFIX="" ;; 1) SUFFIX="-mix" ;; *) echo "error: MIX must be 0 or 1, got $MIX" >&2; exit 1 ;; esac
DEST="${DEST:-$WORK/data-bin-distill$SUFFIX}"
[ -f "$WORK/pieces/train.de" ] || { echo "error: $WORK/pieces is missing: run prepare.sh first" >&2; exit 1; }
[ "$(realpath -m "$DEST")" != "$(realpath -m "$WORK/data-bin")" ] \
  || { echo "error: DEST must not be $WORK/data-bin, which holds the dictionary and the references" >&2; exit 1; }

RUNS="$(IFS=+; echo "$*")"  # the teacher runs joined, as evaluate.sh names an ensemble's directory
TEACHER="$WORK/checkpoints/$RUNS"
PIECES="$TEACHER/train.beam$BEAM.pieces"
LINES=$(wc -l < "$WORK/pieces/train.de")
key() {  # what the translations depend on: the runs' checkpoint files, the vocabulary and evaluate.sh's choices
  # (AVERAGE and LENPEN with evaluate.sh's defaults, so that leaving one out and giving its default are one key)
  case "$CONFIG" in best|best-e512|best-sr|encdec|transformer) average=5 ;; *) average=0 ;; esac
  echo "CONFIG=$CONFIG AVERAGE=${AVERAGE:-$average} LENPEN=${LENPEN:-1.0}"
  md5sum < "$WORK/spm.model"
  for run in "$@"; do
    (cd "$WORK/checkpoints/$run" 2>/dev/null && stat -c '%n %Y %s' checkpoint*.pt) || echo "$run: no checkpoints"
  done
}
if [ -f "$PIECES" ] && [ "$(wc -l < "$PIECES")" -eq "$LINES" ] && [ "$(key "$@")" = "$(cat "$PIECES.key" 2>/dev/null)" ]
then
  echo "== the teacher's translations are there already: $PIECES"
else
  echo "== the teacher ($*) translates the $LINES training sentences, beam $BEAM"
  rm -f "$PIECES.key"
  start=$(date +%s)
  EPOCH="" OUTPUTS="" RUN_NAME="$1" ENSEMBLE="${*:2}" BEAM="$BEAM" bash "$HERE/evaluate.sh" "$CONFIG" train
  key "$@" > "$PIECES.key"
  echo "   $(( $(date +%s) - start )) s"
fi

echo "== binarizing them with data-bin's dictionary -> $DEST"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
cp "$WORK/pieces/train.de" "$TMP/train.de"
cp "$PIECES" "$TMP/train.en"
if [ "$MIX" = 1 ]; then
  cat "$WORK/pieces/train.de" >> "$TMP/train.de"
  cat "$WORK/pieces/train.en" >> "$TMP/train.en"
fi
fairseq-preprocess --source-lang de --target-lang en --srcdict "$WORK/data-bin/dict.de.txt" \
  --tgtdict "$WORK/data-bin/dict.en.txt" --trainpref "$TMP/train" --validpref "$WORK/pieces/valid" \
  --testpref "$WORK/pieces/test2016" --destdir "$TMP/bin" --workers 2 > "$WORK/preprocess.distill.log" 2>&1 \
  || { tail -20 "$WORK/preprocess.distill.log" >&2; exit 1; }
rm -rf "$DEST"
mkdir -p "$(dirname "$DEST")"
mv "$TMP/bin" "$DEST"
echo "done: $DEST ($(wc -l < "$TMP/train.en") training pairs). Next:"
echo "  DATA_BIN=$DEST RUN_NAME=student-of-$RUNS$SUFFIX bash examples/multi30k/train.sh best"  # a new run directory
