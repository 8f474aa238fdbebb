#!/usr/bin/env bash
# The three-client sync simulation (crates/client/tests/sim.rs), longer than
# in CI: SEEDS seeds of OPS random operations each (edits, renames of files
# and folders, deletions, concurrent edits, clients killed and restarted,
# the server restarted), release build. Prints each seed's time from the
# last operation to quiescence (all folders and the server agree, no part
# file left) and the p50 / max over the seeds.
#
#   bench/sync-sim.sh [SEEDS] [OPS]      (default 20 seeds, 300 operations)
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=${1:-20}
OPS=${2:-300}

echo "machine: $(nproc) cores, $(uname -m), $(date -u +%Y-%m-%d)"
echo "simulation: $SEEDS seeds x $OPS operations, 3 clients, release build"
# The whole output (a failing seed prints its operations and every
# folder's state) goes to $LOG; the summary to stdout.
LOG=${LOG:-$(mktemp "${TMPDIR:-/tmp}/sync-sim.XXXXXX.log")}
echo "full output: $LOG"
DISTRIBUSYNC_SIM_SEEDS=$SEEDS DISTRIBUSYNC_SIM_OPS=$OPS \
  cargo test --release -q -p distribusync-client --test sim -- --nocapture >"$LOG" 2>&1 || true
grep -E '^sim |panicked|^seed|test result' "$LOG"
