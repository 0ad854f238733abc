#!/usr/bin/env bash
# `make matrix`: the test suite on every Python 3.10-3.13 this machine has, each in its own environment made by
# `make setup` (.venv-3.X; the Python of .venv reuses .venv), then one table: Python, torch build, fairseq,
# passed/failed/skipped, minutes. Logs in runs/matrix/.
#
#   bash tests/matrix.sh [pytest options]      PYTHONS="3.10 3.12" restricts the versions (default 3.10-3.13)
#
# Environment variables of `make setup` apply to every environment (e.g. TORCH_INDEX). A Python is found as
# pythonX.Y on PATH, else under pyenv's versions/.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
LOGS="$ROOT/runs/matrix"
mkdir -p "$LOGS"

find_python() {  # the path of a working Python $1, or nothing
  local candidate
  for candidate in "$(command -v "python$1" 2>/dev/null)" \
      $(ls -d "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")/versions/$1".*/bin/"python$1" 2>/dev/null); do
    if [ -n "$candidate" ] && "$candidate" -c "import sys; assert sys.version_info[:2] == tuple(map(int, '$1'.split('.')))" \
        >/dev/null 2>&1; then
      echo "$candidate"
      return
    fi
  done
}

ROWS=()
for version in ${PYTHONS:-3.10 3.11 3.12 3.13}; do
  python="$(find_python "$version")"
  if [ -z "$python" ]; then
    ROWS+=("| $version | - | - | not on this machine | - |")
    continue
  fi
  venv=".venv-$version"
  if [ -x .venv/bin/python ] && [ "$(.venv/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')" = "$version" ]; then
    venv=".venv"
  fi
  echo "== Python $version ($python) in $venv"
  start=$(date +%s)
  if ! make setup PYTHON="$python" VENV="$venv" > "$LOGS/setup-$version.log" 2>&1; then
    ROWS+=("| $version | - | - | set-up failed (runs/matrix/setup-$version.log) | $(( ($(date +%s) - start) / 60 )) |")
    continue
  fi
  versions="$("$venv/bin/python" -c 'import torch, fairseq; print(torch.__version__, "|", fairseq.__version__)' 2>/dev/null | tail -n1)"
  start=$(date +%s)
  "$venv/bin/python" -m pytest -q tests "$@" > "$LOGS/test-$version.log" 2>&1
  minutes=$(awk "BEGIN { printf \"%.1f\", ($(date +%s) - $start) / 60 }")
  summary="$(grep -E "^(=+ )?[0-9]+ (passed|failed)" "$LOGS/test-$version.log" | tail -n1 | sed -E 's/=//g; s/ in [0-9.]+s.*//; s/^ +| +$//g')"
  ROWS+=("| $version | ${versions:-?} | ${summary:-no summary (runs/matrix/test-$version.log)} | $minutes |")
  tail -n1 "$LOGS/test-$version.log"
done
{
  echo "| Python | torch | fairseq | tests | minutes |"
  echo "|---|---|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
} | tee "$LOGS/table.md"
! grep -qE "failed|set-up failed|no summary" "$LOGS/table.md"
