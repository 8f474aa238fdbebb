#!/usr/bin/env bash
# Delta transfer against rsync's delta algorithm (daemon mode,
# --no-whole-file -I, --stats), ROUNDS runs per case (default 3), both
# directions:
#   1 byte changed in the middle; 100 bytes inserted at offset 1000;
#   1 MiB appended; the same file under a new name.
# Bytes on the wire: rsync's own --stats (sent + received); ours from the
# server's counters (`distribusync traffic`: request bytes received plus
# data and manifest bytes sent). Times end to end (process start included);
# rsync is followed by `sync` (distribusync fsyncs; rsync does not), plain
# rsync printed beside it. Each timed transfer starts from a dropped page
# cache (`sync; echo 3 > /proc/sys/vm/drop_caches`, as root; bench/lib.sh
# `flush`), the tools alternating which goes first; each figure is the
# median of the rounds with their spread [min-max], and the load average
# is printed before and after.
#
#   bench/delta.sh [SIZE_MIB]      (default 64)
#
# ROUNDS=N sets the rounds per case. BIN=path/to/distribusync uses that binary instead of building the
# release one (e.g. target/release-inc/distribusync, for figures by hand:
# say which build they had); CASES="byte copy" runs only those cases;
# SERVER_LOG=FILE keeps the server's log (with RUST_LOG=debug: where the
# time goes).
#
# With --threshold, measures instead where delta starts to pay, to choose
# --delta-min-size (docs/DESIGN.md, "Delta transfer on the wire"): for
# files of 1, 2, 4, 8, 16, 32 and 64 MiB over loopback, the median of RUNS
# (default 5) timings of
#   - an edit (1 byte in the middle) put and got whole (--delta-min-size off)
#     and by delta (--delta-min-size 0);
#   - new content (random, unknown to the server) put whole and with delta
#     on, which first chunks the file and offers the manifest (the server
#     declines: it lacks it all) before sending it whole: the cost delta
#     adds to new files.
# Times end to end (process start included, the same for both), each from
# a flushed cache. Needs the release build (debug builds are not
# representative: chunking and hashing are several times slower).
#
#   bench/delta.sh --threshold [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = --threshold ]; then
  RUNS=${2:-5}
  . bench/lib.sh
  if [ -z "${BIN:-}" ]; then
    cargo build --release -q -p distribusync
    BIN=$PWD/target/release/distribusync
  fi
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/ds-delta-th.XXXXXX")
  cleanup() { kill "${SERVER_PID:-}" 2>/dev/null || true; rm -rf "$WORK"; }
  trap cleanup EXIT
  mkdir -p "$WORK/master" "$WORK/client"
  DS_PORT=$(port)
  "$BIN" serve --listen "127.0.0.1:$DS_PORT" --root "$WORK/master" 2>"$WORK/server.log" &
  SERVER_PID=$!
  export DISTRIBUSYNC_SERVER="http://127.0.0.1:$DS_PORT"
  for _ in $(seq 100); do "$BIN" ls >/dev/null 2>&1 && break; sleep 0.1; done
  # Median wall time of RUNS runs of: prepare (untimed), then the command.
  # Usage: timed PREPARE COMMAND...
  timed() {
    local prep=$1; shift
    local times=()
    for _ in $(seq "$RUNS"); do
      eval "$prep"; sync
      local t0 t1
      t0=$(date +%s.%N); "$@" >/dev/null 2>&1; t1=$(date +%s.%N)
      times+=("$(python3 -c "print($t1-$t0)")")
    done
    python3 -c "import statistics,sys; print(f'{statistics.median(map(float, sys.argv[1:]))*1000:.1f}')" "${times[@]}"
  }
  printf '%-8s %14s %14s %14s %14s %14s %14s\n' MiB "edit put whole" "edit put delta" \
    "edit get whole" "edit get delta" "new put whole" "new put delta"
  for mib in 1 2 4 8 16 32 64; do
    f="$WORK/base-$mib.bin"
    head -c "$((mib << 20))" /dev/urandom > "$f"
    python3 - "$f" "$WORK/edit-$mib.bin" <<'PY'
import sys
b = bytearray(open(sys.argv[1], "rb").read())
b[len(b) // 2] ^= 0xff
open(sys.argv[2], "wb").write(b)
PY
    remote="t$mib.bin"
    # Puts of the edit: the server holds the base before each run.
    reset_up="\"$BIN\" --delta-min-size off put \"$f\" $remote >/dev/null 2>&1"
    pw=$(timed "$reset_up" "$BIN" --delta-min-size off put "$WORK/edit-$mib.bin" "$remote")
    pd=$(timed "$reset_up" "$BIN" --delta-min-size 0 put "$WORK/edit-$mib.bin" "$remote")
    # Gets of the edit: the server holds it, the client the base.
    "$BIN" --delta-min-size off put "$WORK/edit-$mib.bin" "$remote" >/dev/null 2>&1
    reset_down="cp \"$f\" \"$WORK/client/$remote\""
    gw=$(timed "$reset_down" "$BIN" --delta-min-size off get "$remote" "$WORK/client/$remote")
    gd=$(timed "$reset_down" "$BIN" --delta-min-size 0 get "$remote" "$WORK/client/$remote")
    cmp "$WORK/edit-$mib.bin" "$WORK/client/$remote"
    # New content: a fresh random file each run, under a fresh name.
    reset_new="head -c $((mib << 20)) /dev/urandom > \"$WORK/new.bin\""
    nw=$(timed "$reset_new" sh -c "\"$BIN\" --delta-min-size off put \"$WORK/new.bin\" new-w-$mib-\$\$.bin")
    nd=$(timed "$reset_new" sh -c "\"$BIN\" --delta-min-size 0 put \"$WORK/new.bin\" new-d-$mib-\$\$.bin")
    printf '%-8s %14s %14s %14s %14s %14s %14s\n' "$mib" "$pw" "$pd" "$gw" "$gd" "$nw" "$nd"
  done
  echo "median of $RUNS runs, ms; loopback, $(nproc) cores; release build"
  exit 0
fi
SIZE_MIB=${1:-64}
ROUNDS=${ROUNDS:-3}

. bench/lib.sh
need rsync rsync
if [ -z "${BIN:-}" ]; then
  cargo build --release -q -p distribusync
  BIN=$PWD/target/release/distribusync
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ds-delta.XXXXXX")
cleanup() { kill "${SERVER_PID:-}" "${RSYNCD_PID:-}" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
mkdir -p "$WORK/master" "$WORK/rsync-root" "$WORK/client"
head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom > "$WORK/base.bin"

DS_PORT=$(port); RS_PORT=$(port)
"$BIN" serve --listen "127.0.0.1:$DS_PORT" --root "$WORK/master" 2>"${SERVER_LOG:-$WORK/server.log}" &
SERVER_PID=$!
start_rsyncd "$WORK" "$WORK/rsync-root" "$RS_PORT"
export DISTRIBUSYNC_SERVER="http://127.0.0.1:$DS_PORT"
for _ in $(seq 100); do "$BIN" ls >/dev/null 2>&1 && break; sleep 0.1; done
RS="rsync://127.0.0.1:$RS_PORT/bench"

now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2-$1:.2f}')"; }
kib() { python3 -c "print(f'{$1/1024:.1f}')"; }
# Our counters: received + sent.
ours() { "$BIN" traffic | awk '{s += $2} END {printf "%.0f\n", s}'; }
# rsync --stats: bytes sent + received.
rs_bytes() { awk '/^Total bytes sent:/ {gsub(",","",$4); s+=$4} /^Total bytes received:/ {gsub(",","",$4); s+=$4} END {printf "%.0f\n", s}' "$1"; }

# The edited versions (only those of the cases run: 1 GiB each).
python3 - "$WORK" ${CASES:-byte insert append copy} <<'PY'
import sys, os
w, cases = sys.argv[1], sys.argv[2:]
b = open(f"{w}/base.bin", "rb").read()
mid = len(b) // 2
make = {
    "byte": lambda: b[:mid] + bytes([b[mid] ^ 0xff]) + b[mid+1:],
    "insert": lambda: b[:1000] + os.urandom(100) + b[1000:],
    "append": lambda: b + os.urandom(1 << 20),
    "copy": lambda: b,
}
for c in cases:
    open(f"{w}/{c}.bin", "wb").write(make[c]())
PY

# median [min-max] of the values given.
spread() { python3 -c "import statistics,sys; v=[float(x) for x in sys.argv[1:]]; print(f'{statistics.median(v):.2f} [{min(v):.2f}-{max(v):.2f}]')" "$@"; }
med_kib() { python3 -c "import statistics,sys; print(f'{statistics.median(float(x) for x in sys.argv[1:])/1024:.1f}')" "$@"; }
# One result line from the runs collected in OB OT RB RT RP.
report() {
  printf '%-8s %-9s %10s %10s %-20s %-20s %-20s\n' "$1" "$2" "$(med_kib "${OB[@]}")" "$(med_kib "${RB[@]}")" \
    "$(spread "${OT[@]}")" "$(spread "${RT[@]}")" "$(spread "${RP[@]}")"
}

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-8s %-9s %10s %10s %-20s %-20s %-20s\n' case direction "ours KiB" "rsync KiB" \
  "ours s" "rsync+sync s" "rsync s"
ORDER=0
for case in ${CASES:-byte insert append copy}; do
  # --- upload: the server holds base.bin (and, but for copy, the same name) ---
  "$BIN" put "$WORK/base.bin" base.bin >/dev/null 2>&1
  cp "$WORK/base.bin" "$WORK/rsync-root/base.bin"
  if [ "$case" = copy ]; then target="copy-of-base.bin"; else target="$case.bin"; fi
  run_ours_up() {
    b0=$(ours); flush; t0=$(now)
    "$BIN" put "$WORK/$case.bin" "$target" >/dev/null 2>&1
    t1=$(now); b1=$(ours); OB+=($((b1 - b0))); OT+=("$(secs "$t0" "$t1")")
  }
  run_rsync_up() {
    # rsync reuses content only from the file of the same name: a copy
    # under a new name goes whole (as the issue's figures say).
    flush; t0=$(now)
    rsync -I --no-whole-file --stats "$WORK/$case.bin" "$RS/$target" > "$WORK/rs.stats"
    t1=$(now); sync; t2=$(now)
    RB+=("$(rs_bytes "$WORK/rs.stats")"); RT+=("$(secs "$t0" "$t2")"); RP+=("$(secs "$t0" "$t1")")
  }
  OB=(); OT=(); RB=(); RT=(); RP=()
  for _ in $(seq "$ROUNDS"); do
    # Each round from the same start: the target holds the base (or, for
    # copy, does not exist) on both servers.
    if [ "$case" = copy ]; then
      "$BIN" rm "$target" >/dev/null 2>&1 || true
      rm -f "$WORK/rsync-root/$target"
    else
      "$BIN" put "$WORK/base.bin" "$target" >/dev/null 2>&1
      cp "$WORK/base.bin" "$WORK/rsync-root/$target"
    fi
    if [ $((ORDER % 2)) = 0 ]; then run_ours_up; run_rsync_up; else run_rsync_up; run_ours_up; fi
    ORDER=$((ORDER + 1))
    cmp "$WORK/$case.bin" "$WORK/master/$target"
    cmp "$WORK/$case.bin" "$WORK/rsync-root/$target"
  done
  report "$case" upload

  # --- download: the client holds base.bin under the target's name ---
  src="$case.bin"
  "$BIN" put "$WORK/$case.bin" "$src" >/dev/null 2>&1
  cp "$WORK/$case.bin" "$WORK/rsync-root/$src"
  if [ "$case" = copy ]; then dest="$WORK/client/new-name.bin"; cp "$WORK/base.bin" "$WORK/client/base.bin"
  else dest="$WORK/client/$src"; fi
  rdest="$WORK/client/r-$(basename "$dest")"
  run_ours_down() {
    b0=$(ours); flush; t0=$(now)
    "$BIN" get "$src" "$dest" >/dev/null 2>&1
    t1=$(now); b1=$(ours); OB+=($((b1 - b0))); OT+=("$(secs "$t0" "$t1")")
  }
  run_rsync_down() {
    flush; t0=$(now)
    rsync -I --no-whole-file --stats "$RS/$src" "$rdest" > "$WORK/rs.stats"
    t1=$(now); sync; t2=$(now)
    RB+=("$(rs_bytes "$WORK/rs.stats")"); RT+=("$(secs "$t0" "$t2")"); RP+=("$(secs "$t0" "$t1")")
  }
  OB=(); OT=(); RB=(); RT=(); RP=()
  for _ in $(seq "$ROUNDS"); do
    if [ "$case" = copy ]; then rm -f "$dest" "$rdest"
    else cp "$WORK/base.bin" "$dest"; cp "$WORK/base.bin" "$rdest"; fi
    if [ $((ORDER % 2)) = 0 ]; then run_ours_down; run_rsync_down; else run_rsync_down; run_ours_down; fi
    ORDER=$((ORDER + 1))
    cmp "$WORK/$case.bin" "$dest"; cmp "$WORK/$case.bin" "$rdest"
  done
  report "$case" download
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "file: $SIZE_MIB MiB random, loopback, $(nproc) cores; median [min-max] of $ROUNDS rounds,"
echo "order alternating, each timed transfer from a dropped page cache ($(flush_kind))"
