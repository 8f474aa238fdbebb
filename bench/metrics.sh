#!/usr/bin/env bash
# What recording metrics costs: add calls/s (compute_bench, BENCH_ONLY=add,
# concurrency 1 and 64 over one connection) against the release server
# without and with --metrics-listen, alternating, ROUNDS rounds of each
# (default 5). Both servers have the observe layer (it logs failures
# either way); the difference is the recording. A scrape every 0.5 s runs
# during the "with" rounds, as Prometheus would.
#
#   bench/metrics.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}

cargo build --release -q -p distribusync --bin distribusync --example compute_bench
T=${CARGO_TARGET_DIR:-$PWD/target}
BIN=$T/release/distribusync
BENCH=$T/release/examples/compute_bench

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ds-bench.XXXXXX")
cleanup() { kill "${SERVER_PID:-}" "${SCRAPER_PID:-}" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
. bench/lib.sh

run_one() { # run_one off|on
  local port mport
  port=$(port)
  local extra=()
  if [ "$1" = on ]; then mport=$(port); extra=(--metrics-listen "127.0.0.1:$mport"); fi
  RUST_LOG=warn "$BIN" serve --services compute --listen "127.0.0.1:$port" --root "$WORK/master" \
    "${extra[@]}" 2>"$WORK/server.log" &
  SERVER_PID=$!
  export DISTRIBUSYNC_SERVER="http://127.0.0.1:$port" DISTRIBUSYNC_CLIENT_ID=bench
  for _ in $(seq 100); do "$BIN" add 1 1 >/dev/null 2>&1 && break; sleep 0.1; done
  if [ "$1" = on ]; then
    (while sleep 0.5; do curl -s "127.0.0.1:$mport/metrics" >/dev/null || true; done) &
    SCRAPER_PID=$!
  fi
  BENCH_ONLY=add "$BENCH" "$DISTRIBUSYNC_SERVER" | sed "s/^/metrics $1: /"
  if [ "$1" = on ]; then kill "$SCRAPER_PID"; wait "$SCRAPER_PID" 2>/dev/null || true; fi
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
}

echo "machine: $(nproc) cores, $(uname -m), $(date -u +%Y-%m-%d)"
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then run_one off; run_one on; else run_one on; run_one off; fi
done
