#!/usr/bin/env bash
# Runs every fuzz target (fuzz/, cargo-fuzz on nightly) for SECONDS each,
# one after another on one core, then prints per target the CPU time it
# ran, the executions and the crashes found. Never run by CI.
#
# Usage: bench/fuzz.sh SECONDS [TARGET...]
#
# Each target starts from the committed corpus fuzz/corpus/TARGET (read
# only) plus a scratch corpus fuzz/corpus-full/TARGET (git-ignored) that
# keeps growing across runs; MINIMIZE=1 afterwards rewrites the committed
# corpus from both: libFuzzer's -merge (what `cargo fuzz cmin` does) picks
# the inputs that cover new code, and the KEEP (default 40) largest of
# those are committed, to keep the repository small (the full minimised
# set stays in fuzz/corpus-full). A crash stops its
# target (libFuzzer's default); the input is kept in fuzz/artifacts/TARGET/
# and `cargo +nightly fuzz run -s none TARGET FILE` replays it.
#
# Built without AddressSanitizer (-s none): every crate of ours forbids
# unsafe code, and the sanitizer halves the executions a second; debug
# assertions and overflow checks stay on (cargo-fuzz's default).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

secs=${1:?usage: bench/fuzz.sh SECONDS [TARGET...]}
shift
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(path size numbers ignore token planner server)
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# Compute jobs sort on rayon: keep the server target on one core too.
export RAYON_NUM_THREADS=1
flags=(-s none)
cargo +nightly fuzz build "${flags[@]}"

logs=$(mktemp -d)
mkdir -p corpus-full/server
[ -n "$(ls -A corpus-full/server)" ] || python3 seeds/server_seeds.py corpus-full/server
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "corpus-full/$t" "artifacts/$t"
  before=$(ls "artifacts/$t" | wc -l)
  echo "== $t: ${secs}s" >&2
  # -rss_limit_mb: the server target holds a store and compute budget.
  /usr/bin/time -f '%U %S' -o "$logs/$t.time" \
    cargo +nightly fuzz run "${flags[@]}" "$t" "corpus-full/$t" "corpus/$t" -- \
    -max_total_time="$secs" -print_final_stats=1 -rss_limit_mb=3072 -timeout=30 \
    >"$logs/$t.log" 2>&1 || true
  after=$(ls "artifacts/$t" | wc -l)
  echo "$((after - before))" >"$logs/$t.crashes"
  if [ "${MINIMIZE:-0}" = 1 ]; then
    rm -rf "corpus-min/$t" && mkdir -p "corpus-min/$t"
    cargo +nightly fuzz run "${flags[@]}" "$t" "corpus-min/$t" "corpus/$t" "corpus-full/$t" -- \
      -merge=1 >"$logs/$t.merge" 2>&1
    rm -rf "corpus/$t" && mkdir -p "corpus/$t"
    ls -S "corpus-min/$t" | head -n "${KEEP:-40}" | while read -r f; do
      mv "corpus-min/$t/$f" "corpus/$t/"
    done
    rm -rf "corpus-min/$t"
  fi
done
rmdir corpus-min 2>/dev/null || true

printf '%-10s %10s %14s %8s  %s\n' target cpu_s executions crashes "new artifacts"
for t in "${targets[@]}"; do
  # The last line is "user system" (a failed run adds a line before it).
  cpu=$(tail -n 1 "$logs/$t.time" | awk '{printf "%.0f", $1 + $2}')
  execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$logs/$t.log" | awk '{print $2}' | tail -1 || true)
  [ -n "$execs" ] || execs=$(grep -o '^#[0-9]*' "$logs/$t.log" | tail -1 | tr -d '#' || true)
  crashes=$(cat "$logs/$t.crashes")
  new=$(ls -t "artifacts/$t" | head -n "$crashes" | tr '\n' ' ')
  printf '%-10s %10s %14s %8s  %s\n' "$t" "$cpu" "${execs:-?}" "$crashes" "$new"
done
echo "logs: $logs" >&2
