#!/usr/bin/env bash
# Upload and download of one large random file over loopback, distribusync
# against rsync (daemon mode, --whole-file), in one run. Prints MB/s for
# each, the ratio, and the distribusync server's peak RSS.
#
#   bench/files.sh [SIZE_MIB]      (default 1024)
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${1:-1024}

. bench/lib.sh
need rsync rsync
cargo build --release -q
BIN=$PWD/target/release/distribusync

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ds-bench.XXXXXX")
cleanup() { kill "${SERVER_PID:-}" "${RSYNCD_PID:-}" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
mkdir -p "$WORK/master" "$WORK/rsync-root" "$WORK/client"
head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom > "$WORK/client/big.bin"

DS_PORT=$(port); RS_PORT=$(port)

"$BIN" serve --listen "127.0.0.1:$DS_PORT" --root "$WORK/master" 2>"$WORK/server.log" &
SERVER_PID=$!
start_rsyncd "$WORK" "$WORK/rsync-root" "$RS_PORT"
export DISTRIBUSYNC_SERVER="http://127.0.0.1:$DS_PORT"
for _ in $(seq 100); do "$BIN" ls >/dev/null 2>&1 && break; sleep 0.1; done

now() { date +%s.%N; }
mbps() { python3 -c "print(f'{$SIZE_MIB*1.048576/($2-$1):.0f}')"; }
sync_caches() { sync; }

sync_caches; t0=$(now); "$BIN" put "$WORK/client/big.bin" big.bin >/dev/null; t1=$(now)
DS_UP=$(mbps "$t0" "$t1")
rm -f "$WORK/client/down.bin"
sync_caches; t0=$(now); "$BIN" get big.bin "$WORK/client/down.bin" 2>/dev/null; t1=$(now)
DS_DOWN=$(mbps "$t0" "$t1")
cmp "$WORK/client/big.bin" "$WORK/client/down.bin"

sync_caches; t0=$(now); rsync --whole-file "$WORK/client/big.bin" "rsync://127.0.0.1:$RS_PORT/bench/big.bin"; t1=$(now)
RS_UP=$(mbps "$t0" "$t1")
rm -f "$WORK/client/rdown.bin"
sync_caches; t0=$(now); rsync --whole-file "rsync://127.0.0.1:$RS_PORT/bench/big.bin" "$WORK/client/rdown.bin"; t1=$(now)
RS_DOWN=$(mbps "$t0" "$t1")

RSS_KB=$(awk '/VmHWM/ {print $2}' "/proc/$SERVER_PID/status")
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
echo "file size:            $SIZE_MIB MiB (random), loopback, $(nproc) cores"
echo "upload   distribusync $DS_UP MB/s   rsync $RS_UP MB/s   ratio $(ratio "$DS_UP" "$RS_UP")x"
echo "download distribusync $DS_DOWN MB/s   rsync $RS_DOWN MB/s   ratio $(ratio "$DS_DOWN" "$RS_DOWN")x"
echo "server peak RSS:      $((RSS_KB / 1024)) MiB"
