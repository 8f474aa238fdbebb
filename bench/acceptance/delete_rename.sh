#!/usr/bin/env bash
# Issue 9 item 11: a deletion racing a remote folder rename stays deleted.
set -u; . $(dirname "$0")/lib.sh
W=$(mktemp -d /tmp/ds-acc-dr.XXXX); trap cleanup EXIT
start_server; start_syncs 3
delays=(0 0.01 0.03 0.05 0.08)
for n in 0 1 2 3 4; do mkdir -p $W/c0/d$n; echo "x$n" > $W/c0/d$n/x.txt; echo "y$n" > $W/c0/d$n/y.txt; done
seeded() { for i in 0 1 2; do for n in 0 1 2 3 4; do [ -f $W/c$i/d$n/y.txt ] || return 1; done; done; }
wait_for "seed reaches all 3 clients" 20 seeded || exit 1
sleep 1; fails=0
for n in 0 1 2 3 4; do
  mv $W/c0/d$n $W/c0/e$n; sleep ${delays[$n]}
  if ! rm $W/c1/d$n/x.txt 2>/dev/null; then echo "  skip d$n: the rename reached client 1 before the delete (${delays[$n]}s)"; continue; fi
  conv() { for i in 0 1 2; do [ -f $W/c$i/e$n/y.txt ] && [ ! -e $W/c$i/e$n/x.txt ] && [ ! -e $W/c$i/d$n ] || return 1; done; [ -f $W/master/e$n/y.txt ] && [ ! -e $W/master/e$n/x.txt ] && [ ! -e $W/master/d$n ]; }
  wait_for "rename d$n->e$n with delete of x after ${delays[$n]}s: x stays deleted" 10 conv || { fails=$((fails+1)); (cd $W; find c? master -path '*/.distribusync' -prune -o -name 'x*' -print | sed 's/^/   /'); }
  sleep 2
  conv >/dev/null || { echo "  FAIL d$n: state changed after convergence"; (cd $W; find c? master -path '*/.distribusync' -prune -o -path "*$n*" -print | sed 's/^/   /'); fails=$((fails+1)); }
done
echo "failures: $fails"
