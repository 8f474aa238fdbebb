#!/usr/bin/env bash
# Issue 9 items 8/9: client 1 edits f.txt, ~10 ms later client 0 deletes it (and another file in the folder).
set -u; . $(dirname "$0")/lib.sh
W=$(mktemp -d /tmp/ds-acc-ll.XXXX); trap cleanup EXIT
start_server; start_syncs 3
mkdir -p $W/c0/dir; echo base > $W/c0/dir/f.txt; for k in 1 2 3 4 5 6; do echo g$k > $W/c0/dir/g$k.txt; done
seeded() { for i in 0 1 2; do [ "$(cat $W/c$i/dir/f.txt 2>/dev/null)" = base ] && [ -f $W/c$i/dir/g6.txt ] || return 1; done; }
wait_for "seed reaches all 3 clients" 20 seeded || exit 1
sleep 1
fails=0
for it in 1 2 3 4 5; do
  c0cpu=$(cputime ${SYNC_PIDS[0]})
  { echo "v$it by client1"; head -c ${SIZE:-0} /dev/urandom | base64 -w0; } > $W/c1/dir/f.txt
  sleep 0.01
  rm $W/c0/dir/f.txt $W/c0/dir/g$it.txt
  conv() { for i in 0 1 2; do [ "$(head -1 $W/c$i/dir/f.txt 2>/dev/null)" = "v$it by client1" ] && cmp -s $W/c1/dir/f.txt $W/c$i/dir/f.txt && [ ! -e $W/c$i/dir/g$it.txt ] || return 1; done
           cmp -s $W/c1/dir/f.txt $W/master/dir/f.txt && [ ! -e $W/master/dir/g$it.txt ]; }
  wait_for "iter $it: converge on client1's f.txt, g$it deleted" 15 conv || { fails=$((fails+1)); for i in 0 1 2; do echo "   c$i: f=$(head -c 30 $W/c$i/dir/f.txt 2>&1) g$it=$(ls $W/c$i/dir/g$it.txt 2>&1)"; done; }
  sleep 2
  printf '  client0 CPU during iteration+2s idle: %.2fs\n' "$(echo "$(cputime ${SYNC_PIDS[0]})-$c0cpu"|bc)"
done
c0=$(cputime ${SYNC_PIDS[0]}); sleep 3; printf '  client0 CPU over 3 s idle at end: %.2fs\n' "$(echo "$(cputime ${SYNC_PIDS[0]})-$c0"|bc)"
p=$(parts); [ -z "$p" ] && echo "  ok   no part files" || { echo "  FAIL part files left:"; echo "$p"; fails=$((fails+1)); }
ls -la $W/c0/dir $W/master/dir | sed 's/^/   /'
grep -c "changed locally" $W/sync0.log | sed 's/^/  "changed locally" lines in client0 log: /'
grep -ciE "error|warn" $W/sync*.log | sed 's/^/  warn|error lines: /'
echo "failures: $fails"
