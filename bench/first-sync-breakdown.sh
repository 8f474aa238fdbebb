#!/usr/bin/env bash
# Where a first sync's time goes (issue 16, "first sync against rsync -a +
# sync"): one tree of N small files (~100 bytes, folders of 100), then per
# round, alternating the order, `rsync -a` + `sync` and a first
# `sync --once` to a fresh server, each after `sync` (and a dropped page
# cache when DROP_CACHES=1 and we may). The server runs with its store's
# debug log, which times every upload batch's phases; printed: the wall
# times, the ratio, and per phase the sum over batches (the batches
# overlap: up to 8 are in flight) and the median batch:
#   written   staging files created, written, given their mtime
#   synced    ... and flushed (syncfs, shared between batches)
#   locked    path locks taken for the install
#   installed renamed into place (folders made as needed)
#   dirs      the folders' fsyncs done
#   committed the index transaction committed
#
#   bench/first-sync-breakdown.sh [N]      (default 10000)
#   BIN=path/to/distribusync (default target/debug/distribusync; the
#   figures in bench/RESULTS.md say which build), ROUNDS=3, DROP_CACHES=0|1
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000}
ROUNDS=${ROUNDS:-3}
DROP_CACHES=${DROP_CACHES:-0}
BIN=${BIN:-$PWD/target/debug/distribusync}
. bench/lib.sh
need rsync rsync
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ds-first.XXXXXX")
SERVER_PID=
cleanup() {
  [ -n "$SERVER_PID" ] && { kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; }
  rm -rf "$WORK"
}
trap cleanup EXIT
PORT=$(port)
export DISTRIBUSYNC_SERVER="http://127.0.0.1:$PORT"
now() { date +%s.%N; }
flush_cache() { sync; if [ "$DROP_CACHES" = 1 ] && [ -w /proc/sys/vm/drop_caches ]; then echo 3 > /proc/sys/vm/drop_caches; fi; }

python3 - "$WORK/src" "$N" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, f"d{i // 100:05d}")
    if i % 100 == 0:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:07d}.txt"), "w") as f:
        f.write(f"file {i} " + "x" * 90)
PY

DS=(); RS=()
for round in $(seq "$ROUNDS"); do
  ds_round() {
    [ -n "$SERVER_PID" ] && { kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; }
    rm -rf "$WORK/master" "$WORK/src/.distribusync"; mkdir -p "$WORK/master"
    RUST_LOG=distribusync_server::store=debug "$BIN" serve --listen "127.0.0.1:$PORT" --root "$WORK/master" 2>"$WORK/server.$round.log" &
    SERVER_PID=$!
    for _ in $(seq 200); do "$BIN" ls >/dev/null 2>&1 && break; sleep 0.1; done
    flush_cache
    t0=$(now); "$BIN" sync "$WORK/src" --once 2>"$WORK/client.$round.log"; t1=$(now)
    DS+=("$(python3 -c "print(f'{$t1-$t0:.2f}')")")
    local count; count=$(find "$WORK/master" -type f -name 'f*.txt' | wc -l)
    [ "$count" -eq "$N" ] || { echo "server has $count files, not $N" >&2; exit 1; }
  }
  rs_round() {
    rm -rf "$WORK/rsync"; flush_cache
    t0=$(now); rsync -a --exclude=.distribusync "$WORK/src/" "$WORK/rsync/"; sync; t1=$(now)
    RS+=("$(python3 -c "print(f'{$t1-$t0:.2f}')")")
  }
  if [ $((round % 2)) -eq 1 ]; then ds_round; rs_round; else rs_round; ds_round; fi
  echo "round $round: distribusync ${DS[-1]} s, rsync -a + sync ${RS[-1]} s"
  python3 - "$WORK/server.$round.log" <<'PY'
import re, statistics, sys
def dur(s):
    m = re.fullmatch(r"([0-9.]+)(ns|µs|us|ms|s)", s)
    if not m:
        return None
    v, u = float(m.group(1)), m.group(2)
    return v * {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1000.0}[u]
phases = {k: [] for k in ("written", "synced", "locked", "installed", "dirs_synced", "committed")}
folders = 0
for line in open(sys.argv[1], encoding="utf-8", errors="replace"):
    line = re.sub(r"\x1b\[[0-9;]*m", "", line)
    if "batch staged" not in line and "group installed" not in line and "group committed" not in line:
        continue
    for k in phases:
        m = re.search(rf"\b{k}=([0-9.]+(?:ns|µs|us|ms|s))\b", line)
        if m and (d := dur(m.group(1))) is not None:
            phases[k].append(d)
    m = re.search(r"\bfolders=(\d+)", line)
    if m:
        folders += int(m.group(1))
out = []
for k, v in phases.items():
    if v:
        out.append(f"{k} sum {sum(v):.0f} ms, median {statistics.median(v):.1f} ms ({len(v)})")
print("    server per batch (cumulative from the batch's start): " + "; ".join(out) + f"; folder fsyncs {folders}")
PY
done
python3 - "${DS[*]}" "${RS[*]}" "$N" "$BIN" <<'PY'
import statistics, sys
d = [float(x) for x in sys.argv[1].split()]
r = [float(x) for x in sys.argv[2].split()]
md, mr = statistics.median(d), statistics.median(r)
print(f"N={sys.argv[3]} first sync, median of {len(d)}: distribusync {md:.2f} s, rsync -a + sync {mr:.2f} s: {md/mr:.2f}x ({sys.argv[4]})")
PY
