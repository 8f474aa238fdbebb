#!/usr/bin/env bash
# Issue 9 item 7
set -u; . $(dirname "$0")/lib.sh
W=$(mktemp -d /tmp/ds-acc-add.XXXX); trap cleanup EXIT
start_server
export DISTRIBUSYNC_CLIENT_ID=skeptic
fails=0
M=9223372036854775807; m=-9223372036854775808
exp() { local want=$1; shift; for mode in "" "--async" "--json"; do
  out=$("$BIN" add $mode "$@" 2>$W/err); rc=$?
  [ "$mode" = "--json" ] && out=$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["sum"])' 2>/dev/null)
  if [ "$out" = "$want" ] && [ $rc = 0 ]; then echo "  ok   add $mode $* = $out"; else echo "  FAIL add $mode $*: got '$out' rc=$rc (want $want) $(head -c 200 $W/err)"; fails=$((fails+1)); fi; done; }
expfail() { for mode in "" "--async"; do out=$("$BIN" add $mode "$@" 2>$W/err); rc=$?
  if [ $rc != 0 ]; then echo "  ok   add $mode $* fails: $(grep -v accepted $W/err | head -c 200)"; else echo "  FAIL add $mode $* succeeded: $out"; fails=$((fails+1)); fi; done; }
exp $M $M 1 -1; exp $M 1 -1 $M; exp $M 1 $M -1; exp $M -1 $M 1
exp $m $m -1 1; exp $m -1 $m 1; exp $m 1 $m -1
exp -2 $M $M $m $m -2 2 ; exp -1 $M $m; exp -3 $M $M $M $m $m $m; exp $M $M $M $M $m $m 1 -1 $m $m $M
exp -0.0 -0.0 -0.0; exp -0.0 -0.0 -0.0 -0.0; exp 0.0 -0.0 0.0; exp 0.0 0.0 -0.0
exp 1.7976931348623157e308 1.7976931348623157e308 1.7976931348623157e308 -1.7976931348623157e308
exp 1.7976931348623157e308 -1.7976931348623157e308 1.7976931348623157e308 1.7976931348623157e308
expfail $M 1; expfail $m -1; expfail $M $M; expfail 1.7976931348623157e308 1.7976931348623157e308
# many numbers via menu? order-independence across a big list through --async with detach + job
id=$("$BIN" add --async --detach $M 1 -1); sleep 0.5; echo "  job $id: $("$BIN" job "$id" | tr '\n' ' ')"
echo "failures: $fails"
