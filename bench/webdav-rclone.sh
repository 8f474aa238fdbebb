#!/usr/bin/env bash
# Real clients against `serve --webdav-listen`: rclone's webdav backend
# copies a tree of 1,000 files in and back out, `rclone check` both ways;
# a file rclone puts reaches a running `distribusync sync` client; a file
# that sync client changes shows its new ETag over WebDAV.
#
#   bench/webdav-rclone.sh     (BIN=path/to/distribusync to skip the build)
set -euo pipefail
cd "$(dirname "$0")/.."

. bench/lib.sh
need rclone rclone
if [ -z "${BIN:-}" ]; then
  cargo build --release -q --bin distribusync
  BIN=$PWD/target/release/distribusync
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ds-bench-rclone.XXXXXX")
cleanup() { kill "${DS_PID:-}" "${SYNC_PID:-}" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
mkdir -p "$WORK/master" "$WORK/tree" "$WORK/back" "$WORK/synced"

GRPC_PORT=$(port); DAV_PORT=$(port)
"$BIN" serve --listen "127.0.0.1:$GRPC_PORT" --webdav-listen "127.0.0.1:$DAV_PORT" \
  --root "$WORK/master" 2>"$WORK/ds.log" &
DS_PID=$!
for _ in $(seq 100); do curl -fso /dev/null -X OPTIONS "http://127.0.0.1:$DAV_PORT/" && break; sleep 0.1; done
export RCLONE_CONFIG_DS_TYPE=webdav RCLONE_CONFIG_DS_URL="http://127.0.0.1:$DAV_PORT/" \
  RCLONE_CONFIG_DS_VENDOR=other RCLONE_CONFIG=/dev/null

# 1,000 files in 10 folders (sizes 0 to ~64 KiB, names with spaces and UTF-8).
python3 - "$WORK/tree" <<'PY'
import os, sys, random
random.seed(15)
root = sys.argv[1]
for i in range(1000):
    d = os.path.join(root, f"dir {i % 10}", "sub ü" if i % 3 == 0 else "")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"file {i:04}.bin"), "wb") as f:
        f.write(os.urandom(random.randint(0, 65536)))
PY

fail=0
echo "== rclone copy in (1,000 files)"
/usr/bin/time -f "   %e s" rclone copy "$WORK/tree" ds:tree --transfers 8
echo "== rclone check local -> webdav"
rclone check "$WORK/tree" ds:tree --download 2>&1 | tail -2 || fail=1
echo "== rclone copy out"
/usr/bin/time -f "   %e s" rclone copy ds:tree "$WORK/back" --transfers 8
echo "== rclone check webdav -> local copy"
rclone check ds:tree "$WORK/back" --download 2>&1 | tail -2 || fail=1
diff -r "$WORK/tree" "$WORK/back" && echo "   diff -r: identical" || fail=1

echo "== a file put over WebDAV reaches a running sync client"
"$BIN" sync --server "http://127.0.0.1:$GRPC_PORT" "$WORK/synced" 2>"$WORK/sync.log" &
SYNC_PID=$!
for _ in $(seq 600); do [ -f "$WORK/synced/tree/dir 0/file 0010.bin" ] && break; sleep 0.1; done
echo "from webdav $(date +%s%N)" > "$WORK/note.txt"
rclone copyto "$WORK/note.txt" ds:inbox/note.txt
for _ in $(seq 300); do cmp -s "$WORK/note.txt" "$WORK/synced/inbox/note.txt" && break; sleep 0.1; done
if cmp -s "$WORK/note.txt" "$WORK/synced/inbox/note.txt"; then echo "   arrived"; else echo "   NOT arrived"; fail=1; fi

echo "== a file the sync client changes shows a new ETag"
etag() { curl -sI "http://127.0.0.1:$DAV_PORT/inbox/note.txt" | tr -d '\r' | awk -F': ' 'tolower($1)=="etag"{print $2}'; }
before=$(etag)
echo "changed by sync $(date +%s%N)" > "$WORK/synced/inbox/note.txt"
after=$before
for _ in $(seq 300); do after=$(etag); [ "$after" != "$before" ] && break; sleep 0.1; done
echo "   ETag before $before, after $after"
[ "$after" != "$before" ] || fail=1
[ "$(curl -s "http://127.0.0.1:$DAV_PORT/inbox/note.txt")" = "$(cat "$WORK/synced/inbox/note.txt")" ] || fail=1

[ $fail = 0 ] && echo "ALL CLEAN" || { echo "FAILURES (see above)"; exit 1; }
