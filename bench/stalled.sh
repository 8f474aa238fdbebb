#!/usr/bin/env bash
# Stalled streams against the release server on loopback: N uploads that
# send a header and then nothing plus N downloads of a 16 MiB file that are
# never read, for N in 0, 500 and 2000 (a fresh server each time); reports
# another client's Stat p50/p99 and the server's RSS (stalled_bench example).
#
#   bench/stalled.sh [N...]              (default: 0 500 2000)
#   BIN=/path/to/distribusync bench/stalled.sh 0 500   (another build)
set -euo pipefail
cd "$(dirname "$0")/.."
COUNTS=("${@:-0 500 2000}")
read -r -a COUNTS <<< "${COUNTS[*]}"

. bench/lib.sh
cargo build --release -q -p distribusync --bin distribusync --example stalled_bench
BIN=${BIN:-$PWD/target/release/distribusync}
BENCH=$PWD/target/release/examples/stalled_bench

# Each stalled stream holds a descriptor on both sides (a staging file or
# an open file on the server): 2 x 2,000 streams need more than 1,024.
ulimit -n "$(ulimit -Hn)"
echo "open-file limit: $(ulimit -n)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ds-stalled.XXXXXX")
cleanup() { kill "${SERVER_PID:-}" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
head -c $((16 << 20)) /dev/urandom > "$WORK/file16.bin"

for n in "${COUNTS[@]}"; do
  rm -rf "$WORK/master"; mkdir -p "$WORK/master"
  PORT=$(port)
  "$BIN" serve --listen "127.0.0.1:$PORT" --root "$WORK/master" 2>"$WORK/server.log" &
  SERVER_PID=$!
  export DISTRIBUSYNC_SERVER="http://127.0.0.1:$PORT"
  for _ in $(seq 100); do "$BIN" ls >/dev/null 2>&1 && break; sleep 0.1; done
  "$BIN" put "$WORK/file16.bin" file16.bin >/dev/null
  "$BENCH" "http://127.0.0.1:$PORT" "$SERVER_PID" "$WORK/master" file16.bin "$n"
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
done
