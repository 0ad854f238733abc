#!/usr/bin/env bash
# GPU checks (`make gpu-check`), for a CUDA machine: the GPU-only tests (tests/test_gpu.py: cuDNN encoder and beam
# search equal the CPU path, --amp and --fp16 training, a 2-GPU torchrun run when two GPUs are present), then the
# benchmark beside fairseq's lstm in float32, under --amp and under --fp16.
#
#   PYTHON=/path/to/python bash examples/gpu/check.sh [benchmark.py options]
#
# PYTHON must have a CUDA build of torch, fairseq (fairseq-fixed on Python >= 3.11), sacrebleu, sentencepiece and
# pytest; `make setup`'s environment pins the CPU build and cannot be used. Data: Multi30k when MULTI30K_DIR names
# a raw copy, otherwise the generated corpus (as `make benchmark`). Results go to runs/gpu-check/.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PYTHON="${PYTHON:-python3}"
OUT="${OUT:-$ROOT/runs/gpu-check}"
mkdir -p "$OUT"
export PATH="$(dirname "$(command -v "$PYTHON")"):$PATH" PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" - <<'PY'
import sys, torch
if not torch.cuda.is_available():
    sys.exit(f"gpu-check: torch {torch.__version__} here sees no CUDA device: run it on a GPU machine, with PYTHON "
             "naming a Python whose torch is a CUDA build")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}")
PY
"$PYTHON" -m pytest -q -rs "$ROOT/tests/test_gpu.py" 2>&1 | tee "$OUT/tests.txt"
for precision in fp32 amp fp16; do
  echo "== benchmark on cuda, $precision"
  PYTHON="$PYTHON" bash "$ROOT/examples/benchmark/run.sh" --device cuda --precision "$precision" \
    --json "$OUT/benchmark-$precision.json" "$@" | tee "$OUT/benchmark-$precision.txt"
done
