#!/usr/bin/env bash
# Debian's chromium and chromedriver for the page's browser test (tests/test_service.py), installed with apt-get
# when missing and this runs as root; `make test` runs it. Elsewhere it says what to do and leaves it (the test
# is then skipped with that reason, unless REQUIRE_BROWSER=1, as CI sets, makes it a failure).
set -uo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "install_browser: chromium and chromedriver are missing; as root on Debian/Ubuntu:" \
       "apt-get update && apt-get install -y chromium chromium-driver" >&2
  exit 0
fi
echo "install_browser: apt-get install chromium chromium-driver (for the page's browser test)"
apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver > /dev/null \
  || echo "install_browser: apt-get failed; the browser test will say so" >&2
