#!/usr/bin/env bash
# The speed benchmark (`make benchmark`): bahdanau_gru beside fairseq's lstm and the naive per-step formulation,
# on Multi30k when MULTI30K_DIR names a raw copy (prepared by examples/multi30k/prepare.sh), otherwise on a
# generated corpus. Extra arguments go to benchmark.py (e.g. --steps 20, --models ..., --json out.json); with
# --latency first, the single-sentence latency mode (latency.py) runs instead.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
if [ -n "${MULTI30K_DIR:-}" ]; then
  WORK="${WORK:-$ROOT/runs/multi30k}"
  [ -f "$WORK/data-bin/dict.de.txt" ] || WORK="$WORK" bash "$ROOT/examples/multi30k/prepare.sh"
  DATA=(--data "$WORK/data-bin" --source-lang de --target-lang en --gen-subset test)
else
  WORK="${WORK:-$ROOT/runs/benchmark-synthetic}"
  if [ ! -f "$WORK/bin/dict.src.txt" ]; then
    "${PYTHON:-python}" -m fairseq_bahdanau.analysis.synthetic "$WORK/raw" --train 20000 --valid 500 --test 1000
    fairseq-preprocess --source-lang src --target-lang tgt --trainpref "$WORK/raw/train" \
      --validpref "$WORK/raw/valid" --testpref "$WORK/raw/test" --destdir "$WORK/bin" --workers 2 > /dev/null 2>&1
  fi
  DATA=(--data "$WORK/bin" --source-lang src --target-lang tgt --gen-subset test)
fi
if [ "${1:-}" = --latency ]; then  # the single-sentence mode: latency.py
  shift
  "${PYTHON:-python}" "$ROOT/examples/benchmark/latency.py" "${DATA[@]}" "$@"
else
  "${PYTHON:-python}" "$ROOT/examples/benchmark/benchmark.py" "${DATA[@]}" "$@"
fi
