#!/usr/bin/env bash
# Compute memory under the mix of issue 9, item 3: the release
# `distribusync serve --services compute` with its default compute memory
# budget (1 GiB, or COMPUTE_MEMORY), driven by the compute_memory_bench
# example: 40 kept 4M-number sort results, 10 callback subscribers that
# never read with 4 big results for them, and 20 concurrent 16M-number
# sorts, all at once. Prints what was accepted and refused
# (RESOURCE_EXHAUSTED), and the server's peak RSS (VmHWM) against the budget.
#
#   bench/compute-memory.sh            COMPUTE_MEMORY=512MiB bench/compute-memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BUDGET=${COMPUTE_MEMORY:-1GiB}

cargo build --release -q -p distribusync --bin distribusync --example compute_memory_bench
BIN=$PWD/target/release/distribusync
BENCH=$PWD/target/release/examples/compute_memory_bench

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ds-bench.XXXXXX")
cleanup() { kill "${SERVER_PID:-}" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

. bench/lib.sh
PORT=$(port)
RUST_LOG=${SERVER_LOG:-warn} "$BIN" serve --services compute --listen "127.0.0.1:$PORT" --root "$WORK/master" \
  --compute-memory "$BUDGET" 2>"$WORK/server.log" &
SERVER_PID=$!
export DISTRIBUSYNC_SERVER="http://127.0.0.1:$PORT"
export DISTRIBUSYNC_CLIENT_ID=bench
for _ in $(seq 100); do "$BIN" add 1 1 >/dev/null 2>&1 && break; sleep 0.1; done

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(date -u +%Y-%m-%d)"
echo "server idle RSS: $(awk '/VmRSS/ {print $2 " " $3}' /proc/$SERVER_PID/status)"
"$BENCH" "$DISTRIBUSYNC_SERVER"
echo "compute memory budget: $BUDGET"
echo "server peak RSS (VmHWM): $(awk '/VmHWM/ {printf "%d kB (%.0f MiB)", $2, $2/1024}' /proc/$SERVER_PID/status)"
echo "server RSS after the mix: $(awk '/VmRSS/ {printf "%d kB (%.0f MiB)", $2, $2/1024}' /proc/$SERVER_PID/status)"
sleep 2
echo "server RSS 2 s later: $(awk '/VmRSS/ {printf "%d kB (%.0f MiB)", $2, $2/1024}' /proc/$SERVER_PID/status)"
