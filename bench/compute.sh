#!/usr/bin/env bash
# Compute benchmark: the release `distribusync serve --services compute` on
# loopback, driven by the compute_bench example (one connection):
# add round trip p50/p99 and calls/s at concurrency 1 and 64, async submit ->
# callback p50/p99, and a sort of SORT_N random i64 end to end against the
# same sort in process.
#
#   bench/compute.sh [SORT_N]      (default 10000000)
set -euo pipefail
cd "$(dirname "$0")/.."
SORT_N=${1:-10000000}

cargo build --release -q -p distribusync --bin distribusync --example compute_bench
BIN=$PWD/target/release/distribusync
BENCH=$PWD/target/release/examples/compute_bench

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ds-bench.XXXXXX")
cleanup() { kill "${SERVER_PID:-}" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

. bench/lib.sh
PORT=$(port)
RUST_LOG=${SERVER_LOG:-warn} "$BIN" serve --services compute --listen "127.0.0.1:$PORT" --root "$WORK/master" \
  --max-numbers 20000000 2>"$WORK/server.log" &
SERVER_PID=$!
export DISTRIBUSYNC_SERVER="http://127.0.0.1:$PORT"
export DISTRIBUSYNC_CLIENT_ID=bench
for _ in $(seq 100); do "$BIN" add 1 1 >/dev/null 2>&1 && break; sleep 0.1; done

echo "machine: $(nproc) cores, $(uname -m), $(date -u +%Y-%m-%d)"
"$BENCH" "$DISTRIBUSYNC_SERVER" "$SORT_N"
echo "server peak RSS: $(awk '/VmHWM/ {print $2 " " $3}' /proc/$SERVER_PID/status)"
[ -n "${SERVER_LOG:-}" ] && grep -a " sort" "$WORK/server.log" | tail -3 || true
