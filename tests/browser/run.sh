#!/usr/bin/env bash
# The web page in a real browser: Debian's chromium + chromium-driver (installed
# here if missing) driven by Python selenium (pinned, in a venv under target/).
# Builds the binary, then runs test_web.py against real servers on loopback.
# Called by .ci/run; fails when the page is broken. Screenshots land in
# target/web-shots/ (docs/web-*.png are copies of them).
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  echo "browser test: installing chromium and chromium-driver" >&2
  if [ "$(id -u)" = 0 ]; then apt-get install -y chromium chromium-driver >/dev/null
  else sudo apt-get install -y chromium chromium-driver >/dev/null; fi
fi
venv=target/web-venv
if ! "$venv/bin/python" -c 'import selenium' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q -r tests/browser/requirements.txt
fi
cargo build -q -p distribusync
exec "$venv/bin/python" tests/browser/test_web.py target/debug/distribusync "$@"
