#!/usr/bin/env bash
# rclone over WebDAV against `distribusync serve --webdav-listen` and
# against `rclone serve webdav` (the peer), in one run: upload and download
# of one 1 GiB file and of 1,000 x 1 MiB files. Each server has its own
# empty folder and gets the same source data; rounds alternate which server
# goes first; `sync` before each timed transfer.
#
# Durability differs: distribusync fsyncs every file (and its folder)
# before it answers a PUT; rclone serve webdav does not. The peer's upload
# is therefore timed twice: rclone alone, and rclone followed by `sync`
# (same durability); the ratio uses the latter, the former is printed.
#
#   bench/webdav.sh [SIZE_MIB] [FILES]   (defaults 1024 and 1000; ROUNDS=2;
#                                         BIN=path/to/distribusync to skip the build)
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${1:-1024}
FILES=${2:-1000}
ROUNDS=${ROUNDS:-2}

. bench/lib.sh
need rclone rclone
if [ -z "${BIN:-}" ]; then
  cargo build --release -q --bin distribusync
  BIN=$PWD/target/release/distribusync
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ds-bench-webdav.XXXXXX")
cleanup() { kill "${DS_PID:-}" "${RC_PID:-}" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
mkdir -p "$WORK/ds" "$WORK/rc" "$WORK/src/big" "$WORK/src/many"
head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom > "$WORK/src/big/big.bin"
for i in $(seq -w 1 "$FILES"); do head -c 1048576 /dev/urandom > "$WORK/src/many/f$i.bin"; done

DS_PORT=$(port); RC_PORT=$(port)
"$BIN" serve --listen "127.0.0.1:$(port)" --webdav-listen "127.0.0.1:$DS_PORT" \
  --root "$WORK/ds" 2>"$WORK/ds.log" &
DS_PID=$!
rclone serve webdav --addr "127.0.0.1:$RC_PORT" "$WORK/rc" 2>"$WORK/rc.log" &
RC_PID=$!
for _ in $(seq 100); do
  curl -fso /dev/null -X OPTIONS "http://127.0.0.1:$DS_PORT/" &&
    curl -so /dev/null "http://127.0.0.1:$RC_PORT/" && break
  sleep 0.1
done
export RCLONE_CONFIG=/dev/null
remote() { echo ":webdav,url='http://127.0.0.1:$1/':"; }
RCLONE=(rclone --transfers 8 --webdav-vendor other)

now() { date +%s.%N; }
declare -A T
# time_it KEY CMD...: runs CMD from a flushed cache, appends its seconds to T[KEY].
time_it() {
  local key=$1; shift
  flush
  local a b
  a=$(now); "$@" >/dev/null 2>>"$WORK/rclone.err"; b=$(now)
  T[$key]="${T[$key]:-} $(python3 -c "print(f'{$b-$a:.3f}')")"
}
with_sync() { "$@" && sync; }

round() { # SERVER (ds|rc) PORT ROUND
  local s=$1 port=$2 r=$3 dst
  "${RCLONE[@]}" purge "$(remote "$port")r$r" >/dev/null 2>&1 || true
  if [ "$s" = rc ]; then
    time_it "$s.up.big.nosync" "${RCLONE[@]}" copy "$WORK/src/big" "$(remote "$port")r$r/big"
    "${RCLONE[@]}" purge "$(remote "$port")r$r" >/dev/null 2>&1 || true
    time_it "$s.up.many.nosync" "${RCLONE[@]}" copy "$WORK/src/many" "$(remote "$port")r$r/many"
    "${RCLONE[@]}" purge "$(remote "$port")r$r" >/dev/null 2>&1 || true
  fi
  time_it "$s.up.big" with_sync "${RCLONE[@]}" copy "$WORK/src/big" "$(remote "$port")r$r/big"
  time_it "$s.up.many" with_sync "${RCLONE[@]}" copy "$WORK/src/many" "$(remote "$port")r$r/many"
  dst="$WORK/down-$s-$r"
  time_it "$s.down.big" "${RCLONE[@]}" copy "$(remote "$port")r$r/big" "$dst/big"
  time_it "$s.down.many" "${RCLONE[@]}" copy "$(remote "$port")r$r/many" "$dst/many"
  cmp "$WORK/src/big/big.bin" "$dst/big/big.bin"
  [ "$(ls "$dst/many" | wc -l)" = "$FILES" ]
  rm -rf "$dst"
  "${RCLONE[@]}" purge "$(remote "$port")r$r" >/dev/null 2>&1 || true
}

for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then order="ds rc"; else order="rc ds"; fi
  echo "round $r ($order first)"
  for s in $order; do
    if [ "$s" = ds ]; then round ds "$DS_PORT" "$r"; else round rc "$RC_PORT" "$r"; fi
  done
done

python3 - "$SIZE_MIB" "$FILES" <<PY
import statistics, sys
size, files = float(sys.argv[1]), int(sys.argv[2])
T = {k: [float(x) for x in v.split()] for k, v in {
$(for k in "${!T[@]}"; do echo "  '$k': '${T[$k]}',"; done)
}.items()}
mib = {"big": size, "many": float(files)}
print(f"{'transfer':<26}{'distribusync':>14}{'rclone serve':>14}{'ratio':>8}   every run (s)")
for d in ("up", "down"):
    for w in ("big", "many"):
        ds = statistics.median(T[f"ds.{d}.{w}"]); rc = statistics.median(T[f"rc.{d}.{w}"])
        name = f"{d}load {size:.0f} MiB" if w == 'big' else f"{d}load {files} x 1 MiB"
        rate = lambda t: f"{mib[w] * 1.048576 / t:.0f} MB/s"
        print(f"{name:<26}{rate(ds):>14}{rate(rc):>14}{rc / ds:>7.2f}x   ds {T[f'ds.{d}.{w}']} rc {T[f'rc.{d}.{w}']}")
        if d == "up":
            nos = statistics.median(T[f"rc.up.{w}.nosync"])
            print(f"{'  (rclone without sync)':<26}{'':>14}{rate(nos):>14}{nos / ds:>7.2f}x   rc {T[f'rc.up.{w}.nosync']}")
print("ratio = rclone serve webdav time / distribusync time (> 1: distribusync faster)")
PY
