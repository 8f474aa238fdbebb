#!/usr/bin/env bash
# Sync benchmarks, each in one run with the real binary and a real server:
#  (a) first sync of N small files (default 10,000 x 4 KiB) vs rsync of the
#      same tree to an rsync daemon on loopback;
#  (b) save-to-visible-on-server latency over 200 edits with `sync` running;
#  (c) a no-change `sync --once` pass over M files (default 100,000): time
#      and peak RSS.
#
#   bench/sync.sh [N_SMALL] [N_EDITS] [M_NOCHANGE]   (ROUNDS=3 rounds of (a); PARTS=a: only (a))
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000}
EDITS=${2:-200}
M=${3:-100000}
ROUNDS=${ROUNDS:-3}
PARTS=${PARTS:-abc}

. bench/lib.sh
need rsync rsync
[ -x /usr/bin/time ] || need /usr/bin/time time
cargo build --release -q
BIN=$PWD/target/release/distribusync
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ds-sync-bench.XXXXXX")
# Stops what runs (and waits for it), unmounts the round's file system if
# one is mounted, then removes everything.
cleanup() {
  for pid in "${SERVER_PID:-}" "${RSYNCD_PID:-}" "${SYNC_PID:-}"; do
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  done
  if mountpoint -q "$WORK/area" 2>/dev/null; then umount "$WORK/area" || umount -l "$WORK/area"; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
DS_PORT=$(port); RS_PORT=$(port)
export DISTRIBUSYNC_SERVER="http://127.0.0.1:$DS_PORT"
now() { date +%s.%N; }
median() { python3 -c "import statistics,sys; print(f'{statistics.median(map(float, sys.argv[1:])):.2f}')" "$@"; }

# A fresh server with a fresh MASTER for each part and each round. Old ones
# are left until the end: deleting 10,000 files would slow whoever creates
# files next (ext4 skips inodes deleted in the last minute).
SERVERS=0
start_server() {
  kill "${SERVER_PID:-}" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null || true
  SERVERS=$((SERVERS + 1)); MASTER="$WORK/master.$SERVERS"; mkdir -p "$MASTER"
  "$BIN" serve --listen "127.0.0.1:$DS_PORT" --root "$MASTER" 2>>"$WORK/server.log" &
  SERVER_PID=$!
  for _ in $(seq 100); do "$BIN" ls >/dev/null 2>&1 && return; sleep 0.1; done
  echo "server did not start" >&2; exit 1
}

if [[ $PARTS == *a* ]]; then
make_tree() {
python3 - "$1" "$N" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, f"d{i // 100:03d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:05d}.bin"), "wb") as f:
        f.write(os.urandom(4096))
PY
}
# Where each round runs. File creation on this VM's long-lived ext4 swings
# 3-10x with its history (it skips inodes deleted in the last minute, and
# its free-inode search slows as it fills), which drowned the comparison.
# So, when the bench runs as root with mkfs.ext4 at hand (FRESH_FS=0 turns
# it off), every round gets a new 2 GiB ext4 on a loop device: both tools
# start from the same clean state. Otherwise rounds share $WORK, after a
# 65 s pause for the deleted-inode window.
FRESH=0
if [ "${FRESH_FS:-1}" = 1 ] && [ "$(id -u)" = 0 ] && command -v mkfs.ext4 >/dev/null; then FRESH=1; fi
AREA="$WORK/area"; mkdir -p "$AREA"
if [ "$FRESH" = 0 ]; then
  make_tree "$AREA/src"
  sync
  if [ -z "${NO_SETTLE:-}" ]; then sleep 65; fi
fi
fresh_area() {
  [ "$FRESH" = 1 ] || return 0
  if mountpoint -q "$AREA"; then umount "$AREA"; fi
  rm -f "$WORK/fs.img"; truncate -s 2G "$WORK/fs.img"
  mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$WORK/fs.img"
  mount -o loop "$WORK/fs.img" "$AREA"
  make_tree "$AREA/src"
  sync
}
ds_first_sync() {
  kill "${SERVER_PID:-}" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null || true
  MASTER="$AREA/master.$1"; mkdir -p "$MASTER"
  "$BIN" serve --listen "127.0.0.1:$DS_PORT" --root "$MASTER" 2>>"$WORK/server.log" &
  SERVER_PID=$!
  for _ in $(seq 100); do "$BIN" ls >/dev/null 2>&1 && break; sleep 0.1; done
  rm -f "$AREA/src/.distribusync/state.db"*  # a first sync, every round
  sync; t0=$(now); "$BIN" sync "$AREA/src" --once 2>>"$WORK/sync.log"; t1=$(now)
  DS_AS+=("$(python3 -c "print(f'{$t1-$t0:.2f}')")")
  COUNT=$("$BIN" ls | wc -l)
  [ "$COUNT" -eq "$N" ] || { echo "server has $COUNT files, not $N" >&2; exit 1; }
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=
}
rsync_first_sync() {
  sync; t0=$(now); rsync -r --whole-file --exclude=.distribusync "$AREA/src/" "rsync://127.0.0.1:$RS_PORT/bench/rsync.$1/"; t1=$(now)
  RS_AS+=("$(python3 -c "print(f'{$t1-$t0:.2f}')")")
  # For reference, not the target: rsync made as durable as distribusync
  # (--fsync: each received file is fsynced).
  sync; t0=$(now); rsync -r --whole-file --fsync --exclude=.distribusync "$AREA/src/" "rsync://127.0.0.1:$RS_PORT/bench/rsync-fsync.$1/"; t1=$(now)
  RSF_AS+=("$(python3 -c "print(f'{$t1-$t0:.2f}')")")
}
start_rsyncd "$WORK" "$AREA" "$RS_PORT"
sleep 0.5
# Rounds alternate which tool goes first: whoever writes first into fresh
# page cache and inode tables pays more on this VM.
DS_AS=(); RS_AS=(); RSF_AS=()
for round in $(seq "$ROUNDS"); do
  fresh_area
  if [ $((round % 2)) -eq 1 ]; then ds_first_sync "$round"; rsync_first_sync "$round"
  else rsync_first_sync "$round"; ds_first_sync "$round"; fi
  echo "    round $round: distribusync ${DS_AS[-1]}s, rsync ${RS_AS[-1]}s (rsync --fsync ${RSF_AS[-1]}s)"
done
kill "$RSYNCD_PID" 2>/dev/null; wait "$RSYNCD_PID" 2>/dev/null || true; RSYNCD_PID=
[ "$FRESH" = 1 ] && { umount "$AREA"; rm -f "$WORK/fs.img"; }
DS_A=$(median "${DS_AS[@]}"); RS_A=$(median "${RS_AS[@]}")
WHERE=$([ "$FRESH" = 1 ] && echo "a fresh ext4 per round" || echo "$WORK")
RSF_A=$(median "${RSF_AS[@]}")
echo "(a) first sync of $N x 4 KiB on $WHERE (median of $ROUNDS): distribusync ${DS_A}s, rsync ${RS_A}s, ratio $(python3 -c "print(f'{$DS_A/$RS_A:.2f}')")x; rsync --fsync ${RSF_A}s, ratio $(python3 -c "print(f'{$DS_A/$RSF_A:.2f}')")x"

fi

if [[ $PARTS == *b* ]]; then
# (b) latency: edit a file in the synced folder, poll MASTER until it shows.
start_server
mkdir -p "$WORK/live"
"$BIN" sync "$WORK/live" 2>>"$WORK/sync.log" &
SYNC_PID=$!
python3 - "$WORK/live" "$MASTER" "$EDITS" <<'PY'
import os, sys, time
live, master, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
def wait_for(path, want, limit=10.0):
    start = time.perf_counter()
    while time.perf_counter() - start < limit:
        try:
            with open(path, "rb") as f:
                if f.read() == want:
                    return True
        except FileNotFoundError:
            pass
        time.sleep(0.0005)
    return False
# Warm up: the daemon is connected once the first file shows up.
with open(os.path.join(live, "warm"), "wb") as f:
    f.write(b"warm")
assert wait_for(os.path.join(master, "warm"), b"warm", 30), "sync daemon did not start"
lat = []
for i in range(n):
    data = f"edit {i} ".encode() * 20
    t0 = time.perf_counter()
    with open(os.path.join(live, "doc.txt"), "wb") as f:
        f.write(data)
    if not wait_for(os.path.join(master, "doc.txt"), data):
        print(f"edit {i} never arrived"); sys.exit(1)
    lat.append((time.perf_counter() - t0) * 1000)
    time.sleep(0.02)
lat.sort()
p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
print(f"(b) save-to-visible over {n} edits: p50 {p(0.5):.1f} ms, p99 {p(0.99):.1f} ms, max {lat[-1]:.1f} ms")
PY
kill "$SYNC_PID"; wait "$SYNC_PID" 2>/dev/null || true; SYNC_PID=

fi

if [[ $PARTS == *c* ]]; then
# (c) a no-change pass over M files.
start_server
mkdir -p "$WORK/many"
python3 - "$WORK/many" "$M" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, f"d{i // 1000:03d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:06d}"), "w") as f:
        f.write(str(i))
PY
t0=$(now); "$BIN" sync "$WORK/many" --once 2>>"$WORK/sync.log"; t1=$(now)
echo "    (setup: first sync of $M files took $(python3 -c "print(f'{$t1-$t0:.1f}')")s)"
/usr/bin/time -f "%e %M" -o "$WORK/time.txt" "$BIN" sync "$WORK/many" --once 2>>"$WORK/sync.log"
read -r SECS KB < "$WORK/time.txt"
echo "(c) no-change pass over $M files: ${SECS}s, peak RSS $((KB / 1024)) MiB"
fi
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
