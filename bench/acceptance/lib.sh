# harness: source me. BIN must be set.
BIN=${BIN:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/target/release/distribusync}
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
start_server() { # W
  PORT=$(port); export DISTRIBUSYNC_SERVER="http://127.0.0.1:$PORT"
  RUST_LOG=${SERVER_LOG:-warn} "$BIN" serve --listen 127.0.0.1:$PORT --root "$W/master" "$@" 2>"$W/server.log" &
  SERVER_PID=$!
  for _ in $(seq 200); do "$BIN" ls >/dev/null 2>&1 && return 0; sleep 0.05; done
  echo "server did not start"; return 1
}
start_syncs() { # N
  SYNC_PIDS=()
  for i in $(seq 0 $(($1-1))); do
    mkdir -p "$W/c$i"
    RUST_LOG=${SYNC_LOG:-info} "$BIN" sync "$W/c$i" 2>"$W/sync$i.log" &
    SYNC_PIDS+=($!)
  done
}
cleanup() { for p in "${SYNC_PIDS[@]:-}" ${SERVER_PID:-}; do kill $p 2>/dev/null; done; wait 2>/dev/null; }
now() { date +%s.%N; }
# wait_for DESC TIMEOUT CMD...: polls CMD every 20 ms; prints elapsed or FAIL
wait_for() { local d=$1 t=$2; shift 2; local s=$(now); local end=$(echo "$s+$t"|bc)
  while :; do if "$@" >/dev/null 2>&1; then printf '  ok   %-55s %.2fs\n' "$d" "$(echo "$(now)-$s"|bc)"; return 0; fi
    if (( $(echo "$(now) > $end"|bc) )); then printf '  FAIL %-55s (not after %ss)\n' "$d" "$t"; return 1; fi; sleep 0.02; done; }
cputime() { awk '{print ($14+$15)/100}' /proc/$1/stat; }
parts() { find "$W" -name '*.distribusync-part' -not -path "$W/master/.distribusync/*"; }
