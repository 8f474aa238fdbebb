#!/usr/bin/env bash
# TLS against plaintext, in one run, same release binary: 1 GiB upload and
# download, add p50 at one in flight and calls/s at 64 in flight. Two
# servers on loopback (one --tls on with its self-signed certificate, the
# client pinned by fingerprint; one plaintext), rounds alternating which
# goes first, `sync` before each timed transfer.
#
#   bench/tls.sh [SIZE_MIB]        (default 1024; ROUNDS=3; CACHE=cold|warm;
#                                   BIN=path/to/distribusync to skip the build)
#
# CACHE=cold (the default, as every benchmark here) drops the page cache
# before each timed transfer; CACHE=warm only runs `sync`, so the file
# just uploaded is read from memory and the run is bound by the CPU of
# the two ends sharing the machine's cores.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${1:-1024}
ROUNDS=${ROUNDS:-3}
CACHE=${CACHE:-cold}

. bench/lib.sh
if [ -z "${BIN:-}" ]; then  # BIN=path/to/distribusync skips the build
  cargo build --release -q
  cargo build --release -q -p distribusync --example compute_bench
fi
BIN=${BIN:-$PWD/target/release/distribusync}
CB=$PWD/target/release/examples/compute_bench

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ds-bench-tls.XXXXXX")
cleanup() { kill "${TLS_PID:-}" "${PLAIN_PID:-}" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
mkdir -p "$WORK/tls" "$WORK/plain" "$WORK/client"
head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom > "$WORK/client/big.bin"

# The TLS server requires a token (as any server beyond loopback does); the
# plaintext one runs without: the issue's comparison.
TOKEN=$("$BIN" token create bench --scopes read,write,compute --root "$WORK/tls" 2>/dev/null)
echo "$TOKEN" > "$WORK/token"
TLS_PORT=$(port); PLAIN_PORT=$(port)
"$BIN" serve --listen "127.0.0.1:$TLS_PORT" --root "$WORK/tls" --tls on 2>"$WORK/tls.log" &
TLS_PID=$!
"$BIN" serve --listen "127.0.0.1:$PLAIN_PORT" --root "$WORK/plain" 2>"$WORK/plain.log" &
PLAIN_PID=$!
FP=$("$BIN" serve --root "$WORK/tls" --print-fingerprint)
TLS=(--server "https://127.0.0.1:$TLS_PORT" --fingerprint "$FP" --token-file "$WORK/token")
PLAIN=(--server "http://127.0.0.1:$PLAIN_PORT")
for _ in $(seq 100); do "$BIN" ls "${TLS[@]}" >/dev/null 2>&1 && "$BIN" ls "${PLAIN[@]}" >/dev/null 2>&1 && break; sleep 0.1; done

now() { date +%s.%N; }
settle() { if [ "$CACHE" = cold ]; then flush; else sync; fi; }
mbps() { python3 -c "print(f'{$SIZE_MIB*1.048576/($2-$1):.0f}')"; }
median() { python3 -c "import statistics,sys; print(f'{statistics.median(map(float, sys.argv[1:])):.0f}')" "$@"; }
spread() { python3 -c "import sys; v=sorted(map(float, sys.argv[1:])); print(f'{v[0]:.0f}–{v[-1]:.0f}')" "$@"; }

# One upload then one download of big.bin through flags "$@"; echoes
# "UP DOWN" in MB/s.
transfer() {
  "$BIN" rm big.bin "$@" >/dev/null 2>&1 || true
  rm -f "$WORK/client/down.bin"
  settle; local t0; t0=$(now); "$BIN" put "$WORK/client/big.bin" big.bin "$@" >/dev/null; local t1; t1=$(now)
  settle; local t2; t2=$(now); "$BIN" get big.bin "$WORK/client/down.bin" "$@" 2>/dev/null; local t3; t3=$(now)
  cmp "$WORK/client/big.bin" "$WORK/client/down.bin"
  echo "$(mbps "$t0" "$t1") $(mbps "$t2" "$t3")"
}

T_UP=(); T_DOWN=(); P_UP=(); P_DOWN=()
for round in $(seq "$ROUNDS"); do
  if (( round % 2 )); then order="tls plain"; else order="plain tls"; fi
  for which in $order; do
    if [ "$which" = tls ]; then read -r u d < <(transfer "${TLS[@]}"); T_UP+=("$u"); T_DOWN+=("$d")
    else read -r u d < <(transfer "${PLAIN[@]}"); P_UP+=("$u"); P_DOWN+=("$d"); fi
  done
  echo "round $round ($order): upload TLS ${T_UP[-1]} vs plain ${P_UP[-1]} MB/s; download TLS ${T_DOWN[-1]} vs plain ${P_DOWN[-1]} MB/s"
done

# add: p50 at 1 in flight, calls/s at 64, alternating which goes first.
T_P50=(); P_P50=(); T_CPS=(); P_CPS=()
add_run() { # URL [FP] -> "p50 cps64"
  local out
  if [ -n "${2:-}" ]; then out=$(BENCH_ONLY=add BENCH_FINGERPRINT="$2" BENCH_TOKEN="$TOKEN" "$CB" "$1"); else out=$(BENCH_ONLY=add "$CB" "$1"); fi
  local p50 cps
  p50=$(echo "$out" | awk '/concurrency  1/ {for(i=1;i<=NF;i++) if ($i=="p50") print $(i+1)}')
  cps=$(echo "$out" | awk '/concurrency 64/ {for(i=1;i<=NF;i++) if ($i=="calls/s") print $(i-1)}')
  echo "$p50 $cps"
}
for round in $(seq "$ROUNDS"); do
  if (( round % 2 )); then order="tls plain"; else order="plain tls"; fi
  for which in $order; do
    if [ "$which" = tls ]; then read -r a b < <(add_run "https://127.0.0.1:$TLS_PORT" "$FP"); T_P50+=("$a"); T_CPS+=("$b")
    else read -r a b < <(add_run "http://127.0.0.1:$PLAIN_PORT"); P_P50+=("$a"); P_CPS+=("$b"); fi
  done
  echo "round $round ($order): add p50 TLS ${T_P50[-1]} vs plain ${P_P50[-1]} us; 64 in flight TLS ${T_CPS[-1]} vs plain ${P_CPS[-1]} calls/s"
done

ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
echo
echo "upload   TLS $(median "${T_UP[@]}") MB/s ($(spread "${T_UP[@]}")), plain $(median "${P_UP[@]}") MB/s ($(spread "${P_UP[@]}")): $(ratio "$(median "${T_UP[@]}")" "$(median "${P_UP[@]}")")x"
echo "download TLS $(median "${T_DOWN[@]}") MB/s ($(spread "${T_DOWN[@]}")), plain $(median "${P_DOWN[@]}") MB/s ($(spread "${P_DOWN[@]}")): $(ratio "$(median "${T_DOWN[@]}")" "$(median "${P_DOWN[@]}")")x"
echo "add p50  TLS $(median "${T_P50[@]}") us ($(spread "${T_P50[@]}")), plain $(median "${P_P50[@]}") us ($(spread "${P_P50[@]}")): $(ratio "$(median "${T_P50[@]}")" "$(median "${P_P50[@]}")")x"
echo "add x64  TLS $(median "${T_CPS[@]}") calls/s ($(spread "${T_CPS[@]}")), plain $(median "${P_CPS[@]}") calls/s ($(spread "${P_CPS[@]}")): $(ratio "$(median "${T_CPS[@]}")" "$(median "${P_CPS[@]}")")x"
