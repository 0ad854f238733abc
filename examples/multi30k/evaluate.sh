#!/usr/bin/env bash
# Step 3 of the Multi30k recipe: translate test2016 (or valid, or train) with beam search, detokenize, score with sacreBLEU.
#
#   bash examples/multi30k/evaluate.sh tutorial|best|best-e512|best-sr|best-decay|encdec|lstm|transformer [test|valid|train|blind]
#
# (train: the training split, as distill.sh translates it for a student; the pieces stay in SAVE/train.beamB.pieces)
# (blind: test2017, test2018 and test2017mscoco, whose references this recipe does not have: translated with the
#  test settings, not scored; SAVE/SET.beamB.detok for each. The German sources come from BLIND_DIR/SET.de, or are
#  downloaded, and are binarized once into $WORK/data-bin-blind with data-bin's dictionaries. Never choose anything
#  with them: they are scored elsewhere.)
# Env: WORK (default runs/multi30k), RUN_NAME (the run's directory under $WORK/checkpoints, as for train.sh;
#      default the configuration's name), BEAM (5), LENPEN (1.0), AVERAGE (number of last epoch checkpoints to
#      average, default 5 for best, best-e512, best-sr, encdec and transformer, 0 for the others: then
#      checkpoint_best.pt is used),
#      ENSEMBLE (more runs of the same configuration, their directory names separated by spaces: their checkpoints,
#      chosen or averaged as RUN_NAME's, are ensembled with it, and the outputs go to
#      $WORK/checkpoints/RUN_NAME+OTHER+...; e.g. `ENSEMBLE=best-s2 evaluate.sh best` after
#      `RUN_NAME=best-s2 train.sh best --seed 2`),
#      EPOCH (score that epoch's checkpoint, checkpointEPOCH.pt, instead: the outputs are SPLIT.beamB.epochE.*),
#      OUTPUTS (a directory, e.g. examples/multi30k/outputs: a copy of the detokenized hypotheses goes there as
#      RUN.SPLIT.beamB[.epochE].detok, RUN being the output directory's name).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
HERE="$(cd "$(dirname "$0")" && pwd)"
WORK="${WORK:-$ROOT/runs/multi30k}"
CONFIG="${1:?usage: evaluate.sh tutorial|best|best-e512|best-sr|best-decay|encdec|lstm|transformer [test|valid|train]}"
SPLIT="${2:-test}"
BEAM="${BEAM:-5}"
LENPEN="${LENPEN:-1.0}"
read -r -a RUNS <<< "${RUN_NAME:-$CONFIG} ${ENSEMBLE:-}"
case "$CONFIG" in best|best-e512|best-sr|encdec|transformer) AVERAGE="${AVERAGE:-5}" ;; *) AVERAGE="${AVERAGE:-0}" ;; esac
case "$SPLIT" in test) REF="$WORK/raw/test2016.en" ;; valid) REF="$WORK/raw/valid.en" ;; train) REF="$WORK/raw/train.en" ;;
  blind) REF="" ;;
  *) echo "error: unknown split $SPLIT (test, valid, train or blind)" >&2; exit 1 ;;
esac
BLIND_SETS=(test2017:test_2017_flickr test2018:test_2018_flickr test2017mscoco:test_2017_mscoco)
[ ${#RUNS[@]} -gt 0 ] || { echo "error: RUN_NAME is blank" >&2; exit 1; }
[ "$(printf '%s\n' "${RUNS[@]}" | sort | uniq -d)" = "" ] \
  || { echo "error: a run is named twice in RUN_NAME and ENSEMBLE: ${RUNS[*]}" >&2; exit 1; }
[ -d "$WORK/checkpoints/${RUNS[0]}" ] \
  || { echo "error: $WORK/checkpoints/${RUNS[0]} is missing: train $CONFIG first (or set RUN_NAME as for train.sh)" >&2
       exit 1; }
for run in "${RUNS[@]:1}"; do
  [ -d "$WORK/checkpoints/$run" ] || { echo "error: $WORK/checkpoints/$run (named in ENSEMBLE) is missing:" \
    "train it first (RUN_NAME=$run train.sh $CONFIG ...)" >&2; exit 1; }
done

CHECKPOINTS=()  # one per run: EPOCH's checkpoint, checkpoint_best.pt, or the average of its last AVERAGE epochs
for run in "${RUNS[@]}"; do
  CHECKPOINT="$WORK/checkpoints/$run/checkpoint_best.pt"
  if [ -n "${EPOCH:-}" ]; then
    CHECKPOINT="$WORK/checkpoints/$run/checkpoint$EPOCH.pt"
  elif [ "$AVERAGE" -gt 0 ]; then
    CHECKPOINT="$WORK/checkpoints/$run/average$AVERAGE.pt"
    python "$HERE/average_checkpoints.py" "$WORK/checkpoints/$run" "$AVERAGE" "$CHECKPOINT"
  fi
  [ -f "$CHECKPOINT" ] || { echo "error: $CHECKPOINT is missing" >&2; exit 1; }
  CHECKPOINTS+=("$CHECKPOINT")
done
SAVE="$WORK/checkpoints/$(IFS=+; echo "${RUNS[*]}")"  # the run's own directory, or RUN+OTHER+... for an ensemble
mkdir -p "$SAVE"

translate() {  # translate DATA SUBSET OUT: fairseq-generate, then the detokenized hypotheses in OUT.detok
  local data="$1" subset="$2" out="$3"
  fairseq-generate "$data" --user-dir "$ROOT/fairseq_bahdanau" --source-lang de --target-lang en \
    --gen-subset "$subset" --path "$(IFS=:; echo "${CHECKPOINTS[*]}")" --beam "$BEAM" --lenpen "$LENPEN" \
    --batch-size 128 --cpu \
    > "$out.generate" 2> "$out.log" \
    || { echo "error: fairseq-generate failed; the end of $out.log:" >&2; tail -20 "$out.log" >&2; exit 1; }
  { grep '^H-' "$out.generate" || true; } | sed 's/^H-//' | sort -n | cut -f3 > "$out.pieces"
  python "$HERE/spm.py" decode "$WORK/spm.model" < "$out.pieces" > "$out.detok"
  if [ -n "${OUTPUTS:-}" ]; then
    mkdir -p "$OUTPUTS"
    cp "$out.detok" "$OUTPUTS/$(basename "$SAVE").$(basename "$out").detok"
  fi
}

if [ "$SPLIT" = blind ]; then
  BLIND="$WORK/data-bin-blind"
  if [ ! -f "$BLIND/test2.de-en.de.bin" ] || [ "$WORK/data-bin/dict.de.txt" -nt "$BLIND/test2.de-en.de.bin" ]; then
    mkdir -p "$WORK/raw" "$WORK/pieces"
    for pair in "${BLIND_SETS[@]}"; do
      name="${pair%%:*}"; remote="${pair##*:}"
      if [ -n "${BLIND_DIR:-}" ]; then
        [ -f "$BLIND_DIR/$name.de" ] || { echo "error: missing $BLIND_DIR/$name.de" >&2; exit 1; }
        cp "$BLIND_DIR/$name.de" "$WORK/raw/$name.de"
      else
        curl -fsSL "https://github.com/multi30k/dataset/raw/master/data/task1/raw/$remote.de.gz" | gunzip \
          > "$WORK/raw/$name.de" \
          || { echo "error: could not download $remote.de.gz (set BLIND_DIR to a local copy)" >&2; exit 1; }
      fi
      python "$HERE/spm.py" encode "$WORK/spm.model" < "$WORK/raw/$name.de" > "$WORK/pieces/$name.de"
    done
    rm -rf "$BLIND"
    # German only (no references): test, test1, test2 in BLIND_SETS' order
    fairseq-preprocess --source-lang de --target-lang en --only-source --srcdict "$WORK/data-bin/dict.de.txt" \
      --testpref "$(for pair in "${BLIND_SETS[@]}"; do echo "$WORK/pieces/${pair%%:*}"; done | paste -sd,)" \
      --destdir "$BLIND" --workers 2 > "$WORK/preprocess.blind.log" 2>&1 \
      || { tail -20 "$WORK/preprocess.blind.log" >&2; exit 1; }
    cp "$WORK/data-bin/dict.en.txt" "$BLIND/dict.en.txt"
  fi
  subset=test
  for index in "${!BLIND_SETS[@]}"; do
    name="${BLIND_SETS[$index]%%:*}"
    [ "$index" -eq 0 ] || subset="test$index"
    OUT="$SAVE/$name.beam$BEAM${EPOCH:+.epoch$EPOCH}"
    translate "$BLIND" "$subset" "$OUT"
    [ "$(wc -l < "$OUT.detok")" -eq "$(wc -l < "$WORK/raw/$name.de")" ] \
      || { echo "error: $(wc -l < "$OUT.detok") hypotheses for $(wc -l < "$WORK/raw/$name.de") sources" >&2; exit 1; }
    echo "$CONFIG, $name (blind: not scored here), beam $BEAM, lenpen $LENPEN: $OUT.detok"
  done
  exit 0
fi

OUT="$SAVE/$SPLIT.beam$BEAM${EPOCH:+.epoch$EPOCH}"
translate "$WORK/data-bin" "$SPLIT" "$OUT"
[ "$(wc -l < "$OUT.detok")" -eq "$(wc -l < "$REF")" ] \
  || { echo "error: $(wc -l < "$OUT.detok") hypotheses for $(wc -l < "$REF") references" >&2; exit 1; }
echo "$CONFIG, $SPLIT, beam $BEAM, lenpen $LENPEN, $(basename "${CHECKPOINTS[0]}")$([ ${#RUNS[@]} -gt 1 ] && echo " of ${RUNS[*]}"):"
echo -n "  cased:      "; sacrebleu "$REF" -i "$OUT.detok" -m bleu -b -w 2
echo -n "  lowercased: "; sacrebleu "$REF" -i "$OUT.detok" -m bleu -b -w 2 -lc
sacrebleu "$REF" -i "$OUT.detok" -m bleu -w 2 | grep -E '"(score|signature)"'
