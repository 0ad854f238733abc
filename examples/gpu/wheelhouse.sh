#!/usr/bin/env bash
# `make wheelhouse [PY_VERSION=3.12]`: the wheels that a Linux x86_64 CUDA machine with torch (and numpy,
# sacrebleu, sentencepiece) but without fairseq and without a package registry needs to run `make gpu-check`:
# fairseq-fixed, the pure-Python and small compiled packages it needs beyond torch, numpy, torchaudio and
# scikit-learn and scipy (check.sh stands in for both where they are missing: together 45 MB), pytest, and this
# package. Carry the folder to the machine; examples/gpu/check.sh installs from it
# (with --no-index) whatever is missing there.
#
#   bash examples/gpu/wheelhouse.sh [PY_VERSION]     -> wheelhouse-PY_VERSION/ (OUT overrides), under 64 MB
#
# fairseq-fixed 0.12.3.1 has a binary wheel on PyPI for CPython 3.12 only; for another version the wheel is built
# here (about 3 minutes) with BUILD_PYTHON, a Python of that version with torch installed (default: .venv-X.Y's or
# .venv's python when it is that version).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PYV="${1:-3.12}"
OUT="${OUT:-$ROOT/wheelhouse-$PYV}"
PIP=(python3 -m pip --disable-pip-version-check)
rm -rf "$OUT"
mkdir -p "$OUT"
TARGET=(--only-binary=:all: --python-version "$PYV" --implementation cp --platform manylinux_2_28_x86_64
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any)
# fairseq-fixed's own needs (its Requires-Dist) and theirs, less what a CUDA machine with torch already has
NEEDS=(hydra-core==1.3.2 omegaconf==2.3.0 PyYAML bitarray cffi pycparser cython regex tqdm packaging
       pytest iniconfig pluggy exceptiongroup tomli pygments)  # pygments: pytest 9 imports it
if "${PIP[@]}" download -q --no-deps "${TARGET[@]}" -d "$OUT" fairseq-fixed==0.12.3.1 2>/dev/null; then
  echo "fairseq-fixed: PyPI's binary wheel for Python $PYV"
else
  BUILD_PYTHON="${BUILD_PYTHON:-}"
  for candidate in "$ROOT/.venv-$PYV/bin/python" "$ROOT/.venv/bin/python"; do
    if [ -z "$BUILD_PYTHON" ] && [ -x "$candidate" ] \
        && [ "$("$candidate" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" = "$PYV" ]; then
      BUILD_PYTHON="$candidate"
    fi
  done
  [ -n "$BUILD_PYTHON" ] || { echo "error: PyPI has no fairseq-fixed wheel for Python $PYV; set BUILD_PYTHON to a" \
    "Python $PYV with torch, cython and numpy installed (e.g. make setup PYTHON=python$PYV VENV=.venv-$PYV)" >&2; exit 1; }
  echo "fairseq-fixed: building the wheel for Python $PYV with $BUILD_PYTHON (a few minutes)"
  "$BUILD_PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w "$OUT" fairseq-fixed==0.12.3.1
fi
# antlr4-python3-runtime (omegaconf's parser) is published as source only: a pure-Python wheel is built here
"${PIP[@]}" wheel -q --no-deps -w "$OUT" antlr4-python3-runtime==4.9.3
"${PIP[@]}" download -q --no-deps "${TARGET[@]}" -d "$OUT" "${NEEDS[@]}"
"${PIP[@]}" wheel -q --no-deps -w "$OUT" "$ROOT"
ls -1 "$OUT"
echo "wheelhouse: $OUT, $(du -sm "$OUT" | cut -f1) MB in $(ls "$OUT" | wc -l) wheels"
