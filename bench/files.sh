#!/usr/bin/env bash
# Upload and download of one large random file over loopback, distribusync
# against rsync (daemon mode, --whole-file), in one run. Prints MB/s for
# each, the ratio, and the distribusync server's peak RSS. Then an upload
# killed half way is run again and timed (it resumes).
#
#   bench/files.sh [SIZE_MIB]      (default 1024; ROUNDS=3 rounds, medians)
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${1:-1024}
ROUNDS=${ROUNDS:-3}

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
median() { python3 -c "import statistics,sys; print(f'{statistics.median(map(float, sys.argv[1:])):.0f}')" "$@"; }

# Rounds alternate the two tools, so neither always meets a cold page cache
# (on this VM the first write of 1 GiB into fresh page cache runs at a third
# of the speed of later ones, whoever does it). Each figure is the median.
DS_UPS=(); DS_DOWNS=(); RS_UPS=(); RS_DOWNS=()
for round in $(seq "$ROUNDS"); do
  "$BIN" rm big.bin >/dev/null 2>&1 || true
  rm -f "$WORK/rsync-root/big.bin" "$WORK/client/down.bin" "$WORK/client/rdown.bin"
  sync; t0=$(now); "$BIN" put "$WORK/client/big.bin" big.bin >/dev/null; t1=$(now)
  DS_UPS+=("$(mbps "$t0" "$t1")")
  sync; t0=$(now); rsync --whole-file "$WORK/client/big.bin" "rsync://127.0.0.1:$RS_PORT/bench/big.bin"; t1=$(now)
  RS_UPS+=("$(mbps "$t0" "$t1")")
  sync; t0=$(now); "$BIN" get big.bin "$WORK/client/down.bin" 2>/dev/null; t1=$(now)
  DS_DOWNS+=("$(mbps "$t0" "$t1")")
  cmp "$WORK/client/big.bin" "$WORK/client/down.bin"
  sync; t0=$(now); rsync --whole-file "rsync://127.0.0.1:$RS_PORT/bench/big.bin" "$WORK/client/rdown.bin"; t1=$(now)
  RS_DOWNS+=("$(mbps "$t0" "$t1")")
  echo "round $round: upload ${DS_UPS[-1]} vs rsync ${RS_UPS[-1]} MB/s; download ${DS_DOWNS[-1]} vs rsync ${RS_DOWNS[-1]} MB/s"
done
DS_UP=$(median "${DS_UPS[@]}"); RS_UP=$(median "${RS_UPS[@]}")
DS_DOWN=$(median "${DS_DOWNS[@]}"); RS_DOWN=$(median "${RS_DOWNS[@]}")

# An upload killed (SIGKILL) half way, then run again: it resumes where the
# server stopped receiving. Timed against a whole upload of the same file.
"$BIN" rm big.bin >/dev/null 2>&1 || true
"$BIN" put "$WORK/client/big.bin" big.bin >/dev/null 2>&1 &
PUT_PID=$!
HALF=$((SIZE_MIB * 1024 * 1024 / 2))
staged() { find "$WORK/master/.distribusync/$1" -type f -printf '%s\n' 2>/dev/null | sort -n | tail -1; }
until [ "$(staged staging)" -ge "$HALF" ] 2>/dev/null; do sleep 0.01; done
kill -9 "$PUT_PID"; wait "$PUT_PID" 2>/dev/null || true
until [ -n "$(staged partial)" ]; do sleep 0.01; done
KEPT=$(staged partial)
sync; t0=$(now); "$BIN" put "$WORK/client/big.bin" big.bin 2>"$WORK/resume.err" >/dev/null; t1=$(now)
grep -q "resuming at" "$WORK/resume.err" || { echo "the second put did not resume" >&2; exit 1; }
"$BIN" get big.bin "$WORK/client/down.bin" 2>/dev/null; cmp "$WORK/client/big.bin" "$WORK/client/down.bin"
RESUME_S=$(python3 -c "print(f'{$t1-$t0:.2f}')")
FULL_S=$(python3 -c "print(f'{$SIZE_MIB*1.048576/$DS_UP:.2f}')")

RSS_KB=$(awk '/VmHWM/ {print $2}' "/proc/$SERVER_PID/status")
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
echo "file size:            $SIZE_MIB MiB (random), loopback, $(nproc) cores, median of $ROUNDS rounds"
echo "upload   distribusync $DS_UP MB/s   rsync $RS_UP MB/s   ratio $(ratio "$DS_UP" "$RS_UP")x"
echo "download distribusync $DS_DOWN MB/s   rsync $RS_DOWN MB/s   ratio $(ratio "$DS_DOWN" "$RS_DOWN")x"
echo "resume   killed at $((KEPT / 1048576)) MiB, run again: ${RESUME_S}s (a whole upload at the median: ${FULL_S}s)"
echo "server peak RSS:      $((RSS_KB / 1024)) MiB"
