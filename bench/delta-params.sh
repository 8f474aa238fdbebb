#!/usr/bin/env bash
# Delta transfer, chunking parameters (issue 11): bytes on the wire that the
# planned protocol would move for candidate parameter sets
# (crates/core/examples/delta_params.rs, computed in memory through
# distribusync_core::delta) beside rsync's own count for the same cases
# (rsync --stats, default delta algorithm: -I so the quick check cannot skip,
# --no-whole-file since both ends are local). One run; never in CI.
#
# Usage: bench/delta-params.sh            (64 MiB and 1 GiB)
#        SIZES="64" bench/delta-params.sh
#        RSYNC_ONLY=1 bench/delta-params.sh   (skip ours)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
need rsync rsync

SIZES=${SIZES:-"64 1024"}
WORK=$(mktemp -d /tmp/delta-params.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

if [ -z "${RSYNC_ONLY:-}" ]; then
echo "# ours (protocol of docs/DESIGN.md 'Delta transfer (core)', counted message by message)"
cargo run --release -q -p distribusync-core --example delta_params -- $SIZES
fi

# rsync_case NAME OLD NEW [rename]: rsync NEW onto a copy of OLD and print
# rsync's total bytes sent + received (both directions).
rsync_case() {
  local name=$1 old=$2 new=$3 target=f
  rm -rf "$WORK/src" "$WORK/dst"
  mkdir "$WORK/src" "$WORK/dst"
  cp "$old" "$WORK/dst/f"
  [ "${4:-}" = rename ] && target=g
  cp "$new" "$WORK/src/$target"
  sync
  local t0 t1 out sent recv
  t0=$(date +%s.%N)
  out=$(rsync -I --no-whole-file --stats "$WORK/src/$target" "$WORK/dst/$target")
  t1=$(date +%s.%N)
  cmp -s "$new" "$WORK/dst/$target" || { echo "rsync result differs for $name" >&2; exit 1; }
  sent=$(sed -n 's/^Total bytes sent: //p' <<<"$out" | tr -d ,)
  recv=$(sed -n 's/^Total bytes received: //p' <<<"$out" | tr -d ,)
  printf '| rsync %s | %s | %.1f | %.1f | %.1f | %.2f |\n' "$mib MiB" "$name" \
    "$(echo "($sent + $recv) / 1024" | bc -l)" "$(echo "$sent / 1024" | bc -l)" \
    "$(echo "$recv / 1024" | bc -l)" "$(echo "$t1 - $t0" | bc -l)"
}

echo
echo "# rsync $(rsync --version | head -1 | awk '{print $3}')"
echo
echo "| tool | case | total on wire KiB | sent KiB | received KiB | time s |"
echo "|---|---|---:|---:|---:|---:|"
for mib in $SIZES; do
  head -c "${mib}M" /dev/urandom > "$WORK/old"
  cp "$WORK/old" "$WORK/flipped"
  python3 - "$WORK/flipped" $((mib * 1024 * 1024 / 2)) <<'PY'
import sys
with open(sys.argv[1], "r+b") as f:
    at = int(sys.argv[2]); f.seek(at); b = f.read(1); f.seek(at); f.write(bytes([b[0] ^ 0x55]))
PY
  { head -c 1000 "$WORK/old"; head -c 100 /dev/urandom; tail -c +1001 "$WORK/old"; } > "$WORK/inserted"
  { cat "$WORK/old"; head -c 1M /dev/urandom; } > "$WORK/appended"
  rsync_case "1 byte changed" "$WORK/old" "$WORK/flipped"
  rsync_case "100 B inserted" "$WORK/old" "$WORK/inserted"
  rsync_case "1 MiB appended" "$WORK/old" "$WORK/appended"
  rsync_case "new name" "$WORK/old" "$WORK/old" rename
done
