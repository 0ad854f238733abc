#!/usr/bin/env bash
# What a deployment installs: a fresh virtual environment per runtime, its packages' size on disk (site-packages
# without pip and setuptools, as du counts it) and the wheels' download size.
#
#   bash examples/benchmark/footprint.sh [PYTHON]          (default python3; needs a package index)
#
# onnx:        this package's runtime: onnxruntime (--no-deps: its other requirements serve its Python tools,
#              not inference sessions), numpy, sentencepiece, and the package itself (--no-deps)
# onnx, onnxruntime 1.20.1, no .pyc: the smallest that translates the same (the oldest onnxruntime this
#              package is tested with, 36 MB against 1.32's 72 MB; pip install --no-compile)
# onnx+serve:  the same as onnx with the HTTP service's starlette and uvicorn
# torchscript: what the TorchScript translator of earlier versions needed: torch (whichever build pip resolves
#              here; PyPI's default on Linux is the CUDA build) and sentencepiece
# ct2:         CTranslate2 with sentencepiece (the Transformer runtime of the deployment benchmark)
set -euo pipefail
PYTHON="${1:-python3}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
DIR="$(mktemp -d)"
trap 'rm -rf "$DIR"' EXIT
version() { "$ROOT/.venv/bin/python" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || true; }
pin() { local v; v="$(version "$1")"; [ -n "$v" ] && echo "$1==$v" || echo "$1"; }
measure() {  # name, then the pip install commands' arguments separated by ';'
  local name="$1" venv="$DIR/venv$RANDOM"; shift
  "$PYTHON" -m venv "$venv"
  local IFS=';'
  for args in $*; do
    IFS=' ' read -r -a words <<< "$args"
    "$venv/bin/pip" install -q --disable-pip-version-check "${words[@]}" 2>&1 | grep -v "^WARNING\|dependency conflicts\|requires\|^ERROR: pip's" || true
  done
  local site; site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  local size; size=$(du -sm --exclude=pip --exclude='pip-*' --exclude=setuptools --exclude='setuptools-*' \
    --exclude=_distutils_hack --exclude=distutils-precedence.pth "$site" | cut -f1)
  local packages; packages=$("$venv/bin/pip" list --format freeze --disable-pip-version-check 2>/dev/null \
    | grep -v "^pip=\|^setuptools=" | paste -sd ' ')
  echo "| $name | $size | $packages |"
}
echo "| deployment | installed MB | packages |"
echo "|---|---|---|"
measure onnx "--no-deps $(pin onnxruntime);$(pin numpy) $(pin sentencepiece);--no-deps $ROOT"
measure "onnx, onnxruntime 1.20.1, no .pyc" "--no-deps --no-compile onnxruntime==1.20.1;--no-compile $(pin numpy) $(pin sentencepiece);--no-deps --no-compile $ROOT"
measure onnx+serve "--no-deps $(pin onnxruntime);$(pin numpy) $(pin sentencepiece) $(pin starlette) $(pin uvicorn);--no-deps $ROOT"
measure torchscript "torch==2.13.0 $(pin sentencepiece)"
measure ct2 "$(pin ctranslate2) $(pin sentencepiece)"
