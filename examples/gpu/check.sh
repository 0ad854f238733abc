#!/usr/bin/env bash
# GPU checks (`make gpu-check`), for a CUDA machine, in one call: the GPU-only tests (tests/test_gpu.py: cuDNN
# encoder and beam search equal the CPU path, --amp and --fp16 training, a 2-GPU torchrun run when two GPUs are
# present), then the benchmark beside fairseq's lstm in float32, under --amp and under --fp16, and a one-file
# summary of it all ($OUT/summary.md).
#
#   PYTHON=/path/to/python bash examples/gpu/check.sh [benchmark.py options]
#
# PYTHON must have a CUDA build of torch, sacrebleu and sentencepiece. Where it has no fairseq (a GPU machine or
# cluster without a package registry), what is missing is installed from WHEELHOUSE (default
# wheelhouse-X.Y for PYTHON's version X.Y, made by `make wheelhouse PY_VERSION=X.Y` on a machine with a registry)
# into $OUT/site, with pip --no-index: nothing is downloaded and PYTHON's own packages are left as they are.
# `import fairseq` imports scikit-learn (for audio classification's metrics) and scipy.stats (for the
# sentence-prediction criterion), neither of which anything here calls; where PYTHON lacks them, stand-in modules
# that fail only if those functions are called go on PYTHONPATH (the real packages would take 45 MB of the
# wheelhouse's 64).
# Data: Multi30k when MULTI30K_DIR names a raw copy, otherwise the generated corpus (as `make benchmark`).
# Results go to OUT (default runs/gpu-check/).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PYTHON="${PYTHON:-python3}"
OUT="${OUT:-$ROOT/runs/gpu-check}"
mkdir -p "$OUT"
export PATH="$(dirname "$(command -v "$PYTHON")"):$PATH" PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
start=$(date +%s)
"$PYTHON" - <<'PY'
import sys, torch
if not torch.cuda.is_available():
    sys.exit(f"gpu-check: torch {torch.__version__} here sees no CUDA device: run it on a GPU machine, with PYTHON "
             "naming a Python whose torch is a CUDA build")
PY
PYV="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if ! "$PYTHON" -c "import fairseq, pytest" 2>/dev/null; then
  WHEELHOUSE="${WHEELHOUSE:-$ROOT/wheelhouse-$PYV}"
  [ -d "$WHEELHOUSE" ] || { echo "gpu-check: this Python has no fairseq (or no pytest) and there is no wheelhouse at" \
    "$WHEELHOUSE: run 'make wheelhouse PY_VERSION=$PYV' on a machine with a package registry and bring the folder" \
    "(or set WHEELHOUSE)" >&2; exit 1; }
  SITE="$OUT/site"
  bash "$ROOT/examples/gpu/install_wheelhouse.sh" "$PYTHON" "$WHEELHOUSE" "$SITE"
  export PYTHONPATH="$ROOT:$SITE${PYTHONPATH#$ROOT}" PATH="$SITE/bin:$PATH"
fi
stand_in() {  # stand_in PACKAGE MODULE: PACKAGE.MODULE whose every name fails when called, on PYTHONPATH
  local dir="$OUT/$1-stand-in"
  mkdir -p "$dir/$1"
  echo "\"\"\"A stand-in: $1 is not installed here (examples/gpu/check.sh).\"\"\"" > "$dir/$1/__init__.py"
  cat > "$dir/$1/$2.py" <<STANDIN
def __getattr__(name):  # what fairseq imports at load (and nothing here calls): fails when called
    if name.startswith("__"):
        raise AttributeError(name)
    def missing(*args, **kwargs):
        raise ImportError(f"$1 is not installed here: $1.$2.{name} (examples/gpu/check.sh)")
    return missing
STANDIN
  export PYTHONPATH="$PYTHONPATH:$dir"
  echo "gpu-check: no $1 here: a stand-in for fairseq's import of $1.$2 ($dir)"
}
# scipy.stats: pearsonr, spearmanr (sentence_prediction); sklearn.metrics: f1_score, roc_curve, ... (audio)
"$PYTHON" -c "import scipy.stats" 2>/dev/null || stand_in scipy stats
"$PYTHON" -c "import sklearn.metrics" 2>/dev/null || stand_in sklearn metrics
"$PYTHON" -c "import fairseq, torch; print(f'torch {torch.__version__}, CUDA {torch.version.cuda}, fairseq {fairseq.__version__},', torch.cuda.device_count(), 'x', torch.cuda.get_device_name(0))" \
  | tee "$OUT/versions.txt"
status=0
"$PYTHON" -m pytest -q -rs -p no:cacheprovider "$ROOT/tests/test_gpu.py" 2>&1 | tee "$OUT/tests.txt" || status=1
for precision in fp32 amp fp16; do
  echo "== benchmark on cuda, $precision"
  PYTHON="$PYTHON" bash "$ROOT/examples/benchmark/run.sh" --device cuda --precision "$precision" \
    --json "$OUT/benchmark-$precision.json" "$@" 2>&1 | tee "$OUT/benchmark-$precision.txt" || status=1
done
{
  echo "# gpu-check $(date -u +%F), $(( $(date +%s) - start )) s"
  echo
  cat "$OUT/versions.txt"
  echo
  echo "## tests/test_gpu.py"
  tail -n 15 "$OUT/tests.txt"
  for precision in fp32 amp fp16; do
    echo
    echo "## benchmark, $precision"
    grep -E "^\|" "$OUT/benchmark-$precision.txt" || tail -n 5 "$OUT/benchmark-$precision.txt"
  done
} > "$OUT/summary.md"
echo "gpu-check: summary in $OUT/summary.md (exit $status)"
exit $status
