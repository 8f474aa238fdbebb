#!/usr/bin/env bash
# Where the time of a save -> on server goes (issue 16's p99): a running
# `sync` daemon over a tree of N small files (folders of 100), both it and
# the server logging at debug with timestamps; EDITS saves in place, each
# timed from the write to the file appearing in the server's root. Prints
# p50/p99 and, for the slowest saves, the stages from the logs: save ->
# the daemon's pass planned it -> the server installed it -> visible.
#
#   bench/save-trace.sh [N]     (default 100000)
#   BIN=path/to/distribusync EDITS=100 KEEP=1 (keep the logs in $WORK)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100000}
EDITS=${EDITS:-100}
. bench/lib.sh
if [ -z "${BIN:-}" ]; then cargo build --release -q -p distribusync; BIN=$PWD/target/release/distribusync; fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ds-trace.XXXXXX")
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  [ -n "${KEEP:-}" ] && echo "logs kept in $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT
DS_PORT=$(port)
export DISTRIBUSYNC_SERVER="http://127.0.0.1:$DS_PORT"
MASTER="$WORK/master"; SRC="$WORK/src"; mkdir -p "$MASTER"
RUST_LOG=distribusync_server=debug "$BIN" serve --listen "127.0.0.1:$DS_PORT" --root "$MASTER" 2>"$WORK/server.log" &
PIDS+=("$!")
for _ in $(seq 100); do "$BIN" ls >/dev/null 2>&1 && break; sleep 0.1; done
python3 - "$SRC" "$N" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, f"d{i // 100:05d}")
    if i % 100 == 0:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:07d}.txt"), "w") as f:
        f.write(f"file {i} " + "x" * 90)
PY
"$BIN" sync "$SRC" --once 2>/dev/null
RUST_LOG=distribusync_client=debug "$BIN" sync "$SRC" 2>"$WORK/client.log" &
PIDS+=("$!")
python3 - "$SRC" "$MASTER" "$EDITS" "$WORK" <<'PY'
import os, re, sys, time, datetime
src, master, n, work = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
def wait_for(path, want, limit=600.0):
    start = time.perf_counter()
    while time.perf_counter() - start < limit:
        try:
            with open(path, "rb") as f:
                if f.read() == want:
                    return
        except FileNotFoundError:
            pass
        time.sleep(0.0005)
    raise SystemExit(f"{path} never got {want[:20]!r}")
dirs = sorted(d for d in os.listdir(src) if d.startswith("d"))
with open(os.path.join(src, dirs[0], "warm"), "wb") as f:
    f.write(b"warm")
wait_for(os.path.join(master, dirs[0], "warm"), b"warm")
saves = []
for i in range(n):
    d = dirs[(i * 7919) % len(dirs)]
    rel = f"{d}/edit.txt"
    data = f"edit {i} ".encode() * 5
    w0, t0 = time.time(), time.perf_counter()
    with open(os.path.join(src, rel), "wb") as f:
        f.write(data)
    wait_for(os.path.join(master, rel), data)
    saves.append((rel, w0, (time.perf_counter() - t0) * 1000))
    time.sleep(0.05)
lat = sorted(s[2] for s in saves)
p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
print(f"N={n and len(dirs)*100}: save -> on server (in place): p50 {p(0.5):.1f} ms, p90 {p(0.9):.1f} ms, p99 {p(0.99):.1f} ms, max {lat[-1]:.1f} ms ({n} saves)")
ansi = re.compile(r"\x1b\[[0-9;]*m")
def events(name):
    out = []
    for line in open(os.path.join(work, name), errors="replace"):
        line = ansi.sub("", line)
        m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z\s+(\w+)\s+(.*)", line)
        if m:
            t = datetime.datetime.fromisoformat(m.group(1)[:26]).replace(tzinfo=datetime.timezone.utc).timestamp()
            out.append((t, m.group(3).strip()))
    return out
client, server = events("client.log"), events("server.log")
print("slowest saves, stages in ms after the save (client and server log lines):")
for rel, w0, ms in sorted(saves, key=lambda s: -s[2])[:6]:
    print(f"  {rel}: {ms:.1f} ms")
    for who, evs in (("client", client), ("server", server)):
        for t, msg in evs:
            if w0 - 0.001 <= t <= w0 + ms / 1000 + 0.02:
                print(f"    {who} +{(t - w0) * 1000:7.1f} {msg[:150]}")
PY
