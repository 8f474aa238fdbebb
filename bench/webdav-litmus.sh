#!/usr/bin/env bash
# The litmus WebDAV compliance suite (Debian package `litmus`), groups
# basic, copymove, props, locks and http, against `distribusync serve
# --webdav-listen` and against `rclone serve webdav` (the peer), each on a
# fresh folder on loopback. Prints each group's summary and the totals.
#
#   bench/webdav-litmus.sh            (BIN=path/to/distribusync to skip the build)
set -euo pipefail
cd "$(dirname "$0")/.."

. bench/lib.sh
need litmus litmus
need rclone rclone
if [ -z "${BIN:-}" ]; then
  cargo build --release -q --bin distribusync
  BIN=$PWD/target/release/distribusync
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ds-bench-litmus.XXXXXX")
cleanup() { kill "${DS_PID:-}" "${RC_PID:-}" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
mkdir -p "$WORK/ds" "$WORK/rc"

DS_PORT=$(port); RC_PORT=$(port)
"$BIN" serve --listen "127.0.0.1:$(port)" --webdav-listen "127.0.0.1:$DS_PORT" \
  --root "$WORK/ds" 2>"$WORK/ds.log" &
DS_PID=$!
rclone serve webdav --addr "127.0.0.1:$RC_PORT" "$WORK/rc" 2>"$WORK/rc.log" &
RC_PID=$!
for _ in $(seq 100); do
  curl -fso /dev/null -X OPTIONS "http://127.0.0.1:$DS_PORT/" &&
    curl -so /dev/null "http://127.0.0.1:$RC_PORT/" && break
  sleep 0.1
done

run() { # NAME URL
  echo "== $1"
  # One group at a time: litmus stops at the first group that fails.
  : > "$WORK/$1.out"
  for group in basic copymove props locks http; do
    (cd "$WORK" && TESTS=$group litmus "$2" 2>&1) >> "$WORK/$1.out" || true
  done
  grep -E "summary for|FAIL" "$WORK/$1.out" || true
  python3 - "$WORK/$1.out" "$1" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
passed = run = 0
for m in re.finditer(r"of (\d+) tests run: (\d+) passed", text):
    run += int(m.group(1)); passed += int(m.group(2))
print(f"{sys.argv[2]}: {passed}/{run} passed")
PY
}

run distribusync "http://127.0.0.1:$DS_PORT/"
run rclone "http://127.0.0.1:$RC_PORT/"
