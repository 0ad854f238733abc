#!/usr/bin/env bash
# Install, with pip --no-index, the wheels of WHEELHOUSE that PYTHON lacks (by distribution name) into SITE:
# what examples/gpu/check.sh does on a machine without fairseq and without a package registry, before it puts
# SITE on PYTHONPATH and SITE/bin on PATH. PYTHON's own packages are left as they are.
#
#   bash examples/gpu/install_wheelhouse.sh PYTHON WHEELHOUSE SITE
set -euo pipefail
PYTHON="$1" WHEELHOUSE="$2" SITE="$3"
mapfile -t MISSING < <("$PYTHON" - "$WHEELHOUSE" <<'PY'
import importlib.metadata as md, os, sys
for wheel in sorted(os.listdir(sys.argv[1])):
    name = wheel.split("-")[0]
    if not wheel.endswith(".whl") or name == "fairseq_bahdanau":  # the checkout itself is used for this package
        continue
    try:
        md.version(name)
    except md.PackageNotFoundError:
        print(os.path.join(sys.argv[1], wheel))
PY
)
rm -rf "$SITE"
mkdir -p "$SITE"
if [ "${#MISSING[@]}" -gt 0 ]; then
  echo "installing ${#MISSING[@]} wheels from $WHEELHOUSE into $SITE (no index): ${MISSING[*]##*/}" >&2
  "$PYTHON" -m pip install -q --disable-pip-version-check --no-index --no-deps --target "$SITE" "${MISSING[@]}" >&2
fi
