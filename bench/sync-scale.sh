#!/usr/bin/env bash
# Sync at scale (issue 16), with the real release binary, a real `serve`
# and real `sync` daemons. For each tree size N (small files of ~100 bytes
# in folders of 100):
#  (1) first sync (`sync --once`) against `rsync -a` + `sync` of the same
#      tree, in the same run, the order alternating per round, page cache
#      dropped before each (when /proc/sys/vm/drop_caches is writable);
#  (2) a no-change restart pass (`sync --once` again) and its peak RSS;
#  (3) a running `sync` daemon: save -> on the server (the server's root
#      polled) and server change -> local file (`put` by another client,
#      the synced folder polled), p50 and p99, saved in place and by
#      write-then-rename; peak RSS of the daemon and of the server;
#  (4) once: 100 `sync` daemons of small folders on one server:
#      change -> all 100 clients, p50 and p99.
#
#   bench/sync-scale.sh [SIZES...]      (default: 10000 100000)
#   BIN=path/to/distribusync  use that binary (e.g. an older build)
#   ROUNDS=2 EDITS=40 CLIENTS=100 PARTS=1234
#   MANY=processes (part 4: one `sync` process per client) or MANY=engines
#      (one process running CLIENTS engines, each with its own connection:
#      crates/client/examples/many_engines.rs; MANY_BIN=path/to/many_engines
#      to use a built one, else the one beside BIN's examples/, else built)
#   PARTS=4 runs part 4 alone (no tree is made or synced).
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=("$@"); [ ${#SIZES[@]} -gt 0 ] || SIZES=(10000 100000)
ROUNDS=${ROUNDS:-2}
EDITS=${EDITS:-40}
CLIENTS=${CLIENTS:-100}
PARTS=${PARTS:-1234}
MANY=${MANY:-processes}

. bench/lib.sh
need rsync rsync
[ -x /usr/bin/time ] || need /usr/bin/time time
if [ -z "${BIN:-}" ]; then cargo build --release -q -p distribusync; BIN=$PWD/target/release/distribusync; fi
if [ "$MANY" = engines ] && [[ $PARTS == *4* ]] && [ -z "${MANY_BIN:-}" ]; then
  if [ -x "$(dirname "$BIN")/examples/many_engines" ]; then
    MANY_BIN=$(dirname "$BIN")/examples/many_engines
  else
    cargo build --release -q -p distribusync-client --example many_engines
    MANY_BIN=$PWD/target/release/examples/many_engines
  fi
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ds-scale.XXXXXX")
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
DS_PORT=$(port)
export DISTRIBUSYNC_SERVER="http://127.0.0.1:$DS_PORT"
now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2-$1:.2f}')"; }
median() { python3 -c "import statistics,sys; print(f'{statistics.median(map(float, sys.argv[1:])):.2f}')" "$@"; }
drop_caches() {
  sync
  if [ -w /proc/sys/vm/drop_caches ]; then echo 3 > /proc/sys/vm/drop_caches; CACHES="dropped"; else CACHES="NOT dropped (not root)"; fi
}
hwm() { awk '/VmHWM/ {printf "%d", $2/1024}' "/proc/$1/status"; }

SERVERS=0
start_server() {
  if [ -n "${SERVER_PID:-}" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  SERVERS=$((SERVERS + 1)); MASTER="$WORK/master.$SERVERS"; mkdir -p "$MASTER"
  "$BIN" serve --listen "127.0.0.1:$DS_PORT" --root "$MASTER" 2>>"$WORK/server.log" &
  SERVER_PID=$!; PIDS+=("$SERVER_PID")
  for _ in $(seq 100); do "$BIN" ls >/dev/null 2>&1 && return; sleep 0.1; done
  echo "server did not start" >&2; exit 1
}
make_tree() {
python3 - "$1" "$2" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, f"d{i // 100:05d}")
    if i % 100 == 0:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:07d}.txt"), "w") as f:
        f.write(f"file {i} " + "x" * 90)
PY
}

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); binary $BIN"
# Parts 1-3 work on the trees; part 4 alone makes none.
[[ $PARTS == *[123]* ]] || SIZES=()
for N in "${SIZES[@]}"; do
  SRC="$WORK/src.$N"; make_tree "$SRC" "$N"
  if [[ $PARTS == *1* ]]; then
    DS=(); RS=()
    for round in $(seq "$ROUNDS"); do
      ds_round() {
        start_server; rm -rf "$SRC/.distribusync"; drop_caches
        t0=$(now); /usr/bin/time -f "%M" -o "$WORK/rss" "$BIN" sync "$SRC" --once 2>>"$WORK/sync.log"; t1=$(now)
        DS+=("$(secs "$t0" "$t1")"); DS_RSS=$(( $(cat "$WORK/rss") / 1024 )); SRV_RSS=$(hwm "$SERVER_PID")
        COUNT=$(find "$MASTER" -type f -name 'f*.txt' | wc -l)
        [ "$COUNT" -eq "$N" ] || { echo "server has $COUNT files, not $N" >&2; exit 1; }
      }
      rs_round() {
        rm -rf "$WORK/rsync"; drop_caches
        t0=$(now); rsync -a --exclude=.distribusync "$SRC/" "$WORK/rsync/"; sync; t1=$(now)
        RS+=("$(secs "$t0" "$t1")")
      }
      if [ $((round % 2)) -eq 1 ]; then ds_round; rs_round; else rs_round; ds_round; fi
      echo "  N=$N round $round: distribusync ${DS[-1]}s (client peak ${DS_RSS} MiB, server ${SRV_RSS} MiB), rsync -a + sync ${RS[-1]}s"
    done
    D=$(median "${DS[@]}"); R=$(median "${RS[@]}")
    echo "(1) N=$N first sync (median of $ROUNDS, caches $CACHES): distribusync ${D}s, rsync -a + sync ${R}s, ratio $(python3 -c "print(f'{$D/$R:.2f}')")x"
    rm -rf "$WORK/rsync"
  else
    start_server; "$BIN" sync "$SRC" --once 2>>"$WORK/sync.log"
  fi
  if [[ $PARTS == *2* ]]; then
    drop_caches
    t0=$(now); /usr/bin/time -f "%M" -o "$WORK/rss" "$BIN" sync "$SRC" --once 2>>"$WORK/sync.log"; t1=$(now)
    echo "(2) N=$N no-change restart pass: $(secs "$t0" "$t1")s cold cache, peak RSS $(( $(cat "$WORK/rss") / 1024 )) MiB"
    t0=$(now); "$BIN" sync "$SRC" --once 2>>"$WORK/sync.log"; t1=$(now)
    echo "    warm cache: $(secs "$t0" "$t1")s"
  fi
  if [[ $PARTS == *3* ]]; then
    "$BIN" sync "$SRC" 2>>"$WORK/sync.log" &
    SYNC_PID=$!; PIDS+=("$SYNC_PID")
    python3 - "$SRC" "$MASTER" "$EDITS" "$BIN" "$WORK" <<'PY'
import os, subprocess, sys, time
src, master, n, binary, work = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
def wait_for(path, want, limit=60.0):
    start = time.perf_counter()
    while time.perf_counter() - start < limit:
        try:
            with open(path, "rb") as f:
                if f.read() == want:
                    return time.perf_counter()
        except FileNotFoundError:
            pass
        time.sleep(0.0005)
    raise SystemExit(f"{path} never got {want[:20]!r}")
dirs = sorted(d for d in os.listdir(src) if d.startswith("d"))
# Warm up: the daemon has made its first pass once a new file shows up.
with open(os.path.join(src, dirs[0], "warm"), "wb") as f:
    f.write(b"warm")
wait_for(os.path.join(master, dirs[0], "warm"), b"warm", 600)
def pct(lat):
    # The slowest one and where it fell in the series: a tail at the start
    # of a series is the machine settling, one spread out is the sync.
    worst = max(range(len(lat)), key=lambda i: lat[i])
    lat = sorted(lat)
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
    return f"p50 {p(0.5):.1f} ms, p99 {p(0.99):.1f} ms, slowest {lat[-1]:.1f} ms (#{worst + 1})"
for style in ("in place", "write-then-rename"):
    lat = []
    for i in range(n):
        d = dirs[(i * 7919) % len(dirs)]
        rel = f"{d}/edit.txt"
        data = f"{style} edit {i} ".encode() * 5
        t0 = time.perf_counter()
        if style == "in place":
            with open(os.path.join(src, rel), "wb") as f:
                f.write(data)
        else:
            tmp = os.path.join(src, d, f".edit.txt.tmp{i}")
            with open(tmp, "wb") as f:
                f.write(data)
            os.rename(tmp, os.path.join(src, rel))
        lat.append((wait_for(os.path.join(master, rel), data) - t0) * 1000)
        time.sleep(0.05)
    print(f"(3) save -> on server, {style}: {pct(lat)} ({n} saves)")
lat = []
for i in range(n):
    d = dirs[(i * 104729 + 3) % len(dirs)]
    rel = f"{d}/remote.txt"
    data = f"server edit {i} ".encode() * 5
    tmp = os.path.join(work, "remote-src")
    with open(tmp, "wb") as f:
        f.write(data)
    subprocess.run([binary, "put", tmp, rel], check=True, stdout=subprocess.DEVNULL)
    t0 = time.perf_counter()  # the server has it now
    lat.append((wait_for(os.path.join(src, rel), data) - t0) * 1000)
    time.sleep(0.05)
print(f"(3) server change -> local file: {pct(lat)} ({n} changes, by `put`; timed from its return)")
PY
    echo "    peak RSS: sync daemon $(hwm "$SYNC_PID") MiB, server $(hwm "$SERVER_PID") MiB"
    kill "$SYNC_PID"; wait "$SYNC_PID" 2>/dev/null || true
  fi
  rm -rf "$SRC"
done

if [[ $PARTS == *4* ]]; then
  start_server
  # Each daemon holds one inotify instance; the default limit is 128.
  if [ "$(cat /proc/sys/fs/inotify/max_user_instances)" -lt $((CLIENTS + 64)) ] && [ -w /proc/sys/fs/inotify/max_user_instances ]; then
    echo $((CLIENTS + 256)) > /proc/sys/fs/inotify/max_user_instances
  fi
  for c in $(seq "$CLIENTS"); do
    mkdir -p "$WORK/many/c$c"
    for f in $(seq 2); do echo "client $c file $f" > "$WORK/many/c$c/c$c-f$f.txt"; done
  done
  # Each folder's own files first (so the server holds 2 x CLIENTS), then
  # every daemon brings down the others'.
  if [ "$MANY" = engines ]; then
    # One process, one engine (and one connection) per folder.
    "$MANY_BIN" "$DISTRIBUSYNC_SERVER" $(for c in $(seq "$CLIENTS"); do echo "$WORK/many/c$c"; done) 2>>"$WORK/many.log" &
    PIDS+=("$!"); MANY_PID=$!
  else
    for c in $(seq "$CLIENTS"); do
      "$BIN" sync "$WORK/many/c$c" --rescan-secs 3600 2>>"$WORK/many.log" &
      PIDS+=("$!")
    done
  fi
  python3 - "$WORK/many" "$CLIENTS" "$EDITS" "$BIN" "$WORK" "$([ "$MANY" = engines ] && echo "one process running $CLIENTS engines" || echo "one process each")" <<'PY'
import os, subprocess, sys, time
root, clients, n, binary, work = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
def all_have(rel, want, limit=300.0):
    start = time.perf_counter()
    left = set(range(1, clients + 1))
    while left and time.perf_counter() - start < limit:
        for c in list(left):
            try:
                with open(os.path.join(root, f"c{c}", rel), "rb") as f:
                    if f.read() == want:
                        left.discard(c)
            except FileNotFoundError:
                pass
        if left:
            time.sleep(0.0005)
    if left:
        raise SystemExit(f"{len(left)} clients never got {rel}")
    return time.perf_counter()
# Warm up: everyone connected and in step.
tmp = os.path.join(work, "many-src")
with open(tmp, "wb") as f:
    f.write(b"warm")
subprocess.run([binary, "put", tmp, "warm.txt"], check=True, stdout=subprocess.DEVNULL)
all_have("warm.txt", b"warm", 600)
lat = []
for i in range(n):
    data = f"for everyone {i}".encode()
    with open(tmp, "wb") as f:
        f.write(data)
    subprocess.run([binary, "put", tmp, "shared.txt"], check=True, stdout=subprocess.DEVNULL)
    t0 = time.perf_counter()
    lat.append((all_have("shared.txt", data) - t0) * 1000)
    time.sleep(0.1)
lat.sort()
p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
print(f"(4) {clients} sync clients ({sys.argv[6]}), change -> all of them: p50 {p(0.5):.1f} ms, p99 {p(0.99):.1f} ms ({n} changes)")
PY
  echo "    server peak RSS $(hwm "$SERVER_PID") MiB$([ "$MANY" = engines ] && echo ", engines' process $(hwm "$MANY_PID") MiB")"
fi
