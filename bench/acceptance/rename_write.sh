#!/usr/bin/env bash
# Issue 9 item 10: a file written just after a remote folder rename is uploaded within ~1-2 s.
set -u; . $(dirname "$0")/lib.sh
W=$(mktemp -d /tmp/ds-acc-rw.XXXX); trap cleanup EXIT
start_server; start_syncs 3
for n in 1 2 3 4; do mkdir -p $W/c0/d$n/sub; for k in 1 2 3; do echo "d$n $k" > $W/c0/d$n/a$k.txt; done; echo s > $W/c0/d$n/sub/s.txt; done
seeded() { for i in 0 1 2; do [ -f $W/c$i/d4/sub/s.txt ] && [ -f $W/c$i/d1/a3.txt ] || return 1; done; }
wait_for "seed reaches all 3 clients" 20 seeded || exit 1
sleep 1; fails=0
for n in 1 2 3 4; do
  mv $W/c0/d$n $W/c0/e$n
  arrived() { [ -f $W/c1/e$n/a1.txt ] && [ ! -e $W/c1/d$n ]; }
  wait_for "rename d$n->e$n reaches client1" 10 arrived || fails=$((fails+1))
  t0=$(now); echo "new $n" > $W/c1/e$n/new.txt
  if [ $n -ge 3 ]; then echo "nested $n" > $W/c1/e$n/sub/new2.txt; fi
  up() { [ "$(cat $W/master/e$n/new.txt 2>/dev/null)" = "new $n" ] && { [ $n -lt 3 ] || [ -f $W/master/e$n/sub/new2.txt ]; }; }
  wait_for "file written in e$n right after the rename uploaded" 5 up || fails=$((fails+1))
  everywhere() { for i in 0 2; do [ -f $W/c$i/e$n/new.txt ] || return 1; done; }
  wait_for "... and reaches clients 0 and 2" 5 everywhere || fails=$((fails+1))
done
# variant: write into the OLD folder name on client1 right before the rename reaches it
mkdir -p $W/c0/r; echo r > $W/c0/r/x.txt
wait_for "seed r/" 10 bash -c "[ -f $W/c1/r/x.txt ] && [ -f $W/c2/r/x.txt ]"; sleep 1
mv $W/c0/r $W/c0/r2; echo early > $W/c1/r/early.txt
conv() { for i in 0 1 2; do [ -f $W/c$i/r2/x.txt ] || return 1; done; f=$(find $W/master -name early.txt | head -1); [ -n "$f" ] && for i in 0 1 2; do [ -f "$W/c$i/${f#$W/master/}" ] || return 1; done; }
wait_for "racing write in old name kept and synced everywhere" 10 conv || { fails=$((fails+1)); find $W/c? $W/master -name 'early*' -o -name 'r*' -maxdepth 1; }
find $W/master -name 'early.txt' | sed 's/^/   early.txt on server at: /'
p=$(parts); [ -z "$p" ] && echo "  ok   no part files" || { echo "  FAIL part files: $p"; fails=$((fails+1)); }
echo "failures: $fails"
