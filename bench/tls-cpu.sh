#!/usr/bin/env bash
# CPU seconds (user+sys of client and server) and system calls per transfer,
# TLS against plaintext: robust figures on a loaded machine, where
# wall-clock ratios swing with the neighbours' load. Same binary, two
# servers on loopback, rounds alternating which goes first.
#
#   bench/tls-cpu.sh [SIZE_MIB] [BIN]    (default 256, target/release/distribusync; ROUNDS=3)
#   STRACE=1 bench/tls-cpu.sh 64         (also: syscall counts of one put and get)
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${1:-256}
BIN=${2:-$PWD/target/release/distribusync}
ROUNDS=${ROUNDS:-3}
. bench/lib.sh

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ds-bench-tlscpu.XXXXXX")
cleanup() { kill "${TLS_PID:-}" "${PLAIN_PID:-}" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
mkdir -p "$WORK/tls" "$WORK/plain" "$WORK/client"
head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom > "$WORK/client/big.bin"
TLS_PORT=$(port); PLAIN_PORT=$(port)
"$BIN" serve --listen "127.0.0.1:$TLS_PORT" --root "$WORK/tls" --tls on 2>"$WORK/tls.log" &
TLS_PID=$!
"$BIN" serve --listen "127.0.0.1:$PLAIN_PORT" --root "$WORK/plain" 2>"$WORK/plain.log" &
PLAIN_PID=$!
FP=$("$BIN" serve --root "$WORK/tls" --print-fingerprint)
TLS=(--server "https://127.0.0.1:$TLS_PORT" --fingerprint "$FP")
PLAIN=(--server "http://127.0.0.1:$PLAIN_PORT")
for _ in $(seq 100); do "$BIN" ls "${TLS[@]}" >/dev/null 2>&1 && "$BIN" ls "${PLAIN[@]}" >/dev/null 2>&1 && break; sleep 0.1; done

# CPU seconds (user+sys) of process PID so far.
cpu_of() { awk -v t="$(getconf CLK_TCK)" '{print ($14+$15)/t}' "/proc/$1/stat"; }
# "CLIENT_S SERVER_S WALL_S" for: client command ... against server PID.
measure() {
  local pid=$1; shift
  sync
  local s0 t0 t1 s1 c
  s0=$(cpu_of "$pid"); t0=$(date +%s.%N)
  /usr/bin/time -o "$WORK/time" -f '%U %S' "$BIN" "$@" >/dev/null 2>&1
  c=$(tail -1 "$WORK/time")
  t1=$(date +%s.%N); s1=$(cpu_of "$pid")
  python3 -c "u,s='$c'.split(); print(f'{float(u)+float(s):.2f} {$s1-$s0:.2f} {$t1-$t0:.2f}')"
}
per_gib() { python3 -c "print(f'{$1*1024/$SIZE_MIB:.2f}')"; }

run() { # WHICH -> prints a line
  local which=$1 pid flags
  if [ "$which" = tls ]; then pid=$TLS_PID; flags=("${TLS[@]}"); else pid=$PLAIN_PID; flags=("${PLAIN[@]}"); fi
  "$BIN" rm big.bin "${flags[@]}" >/dev/null 2>&1 || true
  rm -f "$WORK/client/down.bin"
  read -r uc us uw < <(measure "$pid" put "$WORK/client/big.bin" big.bin "${flags[@]}")
  read -r dc ds dw < <(measure "$pid" get big.bin "$WORK/client/down.bin" "${flags[@]}")
  cmp "$WORK/client/big.bin" "$WORK/client/down.bin"
  echo "$which: upload CPU s/GiB client $(per_gib "$uc") server $(per_gib "$us") (wall $uw s); download CPU s/GiB client $(per_gib "$dc") server $(per_gib "$ds") (wall $dw s)"
}
for round in $(seq "$ROUNDS"); do
  if (( round % 2 )); then order="tls plain"; else order="plain tls"; fi
  for which in $order; do run "$which"; done
done

if [ -n "${STRACE:-}" ]; then
  need strace strace
  for which in tls plain; do
    if [ "$which" = tls ]; then flags=("${TLS[@]}"); else flags=("${PLAIN[@]}"); fi
    "$BIN" rm big.bin "${flags[@]}" >/dev/null 2>&1 || true
    rm -f "$WORK/client/down.bin"
    echo "== $which client put: syscalls"
    strace -f -c -e trace=write,writev,sendto,sendmsg,read,readv,recvfrom,recvmsg "$BIN" put "$WORK/client/big.bin" big.bin "${flags[@]}" 2>&1 >/dev/null | grep -E 'calls|write|read|recv|send|total'
    echo "== $which client get: syscalls"
    strace -f -c -e trace=write,writev,sendto,sendmsg,read,readv,recvfrom,recvmsg "$BIN" get big.bin "$WORK/client/down.bin" "${flags[@]}" 2>&1 >/dev/null | grep -E 'calls|write|read|recv|send|total'
  done
fi
