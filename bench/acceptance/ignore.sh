#!/usr/bin/env bash
# Issue 9 item 12: editing .distribusyncignore while running.
set -u; . $(dirname "$0")/lib.sh
W=$(mktemp -d /tmp/ds-acc-ig.XXXX); trap cleanup EXIT
start_server; start_syncs 3
echo hi > $W/c0/hello.txt
wait_for "seed" 20 bash -c "for i in 0 1 2; do [ -f $W/c\$i/hello.txt ] || exit 1; done" || exit 1
sleep 1; fails=0
echo '*.log' > $W/c0/.distribusyncignore
sleep 0.05
echo secret > $W/c0/debug.log; echo m1 > $W/c0/marker1.txt
wait_for "marker1 uploaded" 10 test -f $W/master/marker1.txt || fails=$((fails+1))
sleep 3
[ -e $W/master/debug.log ] && { echo "  FAIL debug.log (created 50ms after the rule) uploaded"; fails=$((fails+1)); } || echo "  ok   debug.log (created 50ms after the rule) not uploaded"
# immediate: rule then file at once (editor append)
echo '*.tmp' >> $W/c0/.distribusyncignore; echo secret > $W/c0/a.tmp; echo m2 > $W/c0/marker2.txt
wait_for "marker2 uploaded" 10 test -f $W/master/marker2.txt || fails=$((fails+1)); sleep 3
[ -e $W/master/a.tmp ] && { echo "  FAIL a.tmp (created right after the rule) uploaded"; fails=$((fails+1)); } || echo "  ok   a.tmp not uploaded"
# editing the file in place, as an editor would (write to temp, rename over)
printf '*.log\n*.tmp\n*.bak\n' > $W/c0/.ig.new && mv $W/c0/.ig.new $W/c0/.distribusyncignore; sleep 0.2
echo secret > $W/c0/x.bak; echo m3 > $W/c0/marker3.txt
wait_for "marker3 uploaded" 10 test -f $W/master/marker3.txt || fails=$((fails+1)); sleep 3
[ -e $W/master/x.bak ] && { echo "  FAIL x.bak (rule added via rename-over) uploaded"; fails=$((fails+1)); } || echo "  ok   x.bak not uploaded"
ls -a $W/master | tr '\n' ' ' | sed 's/^/   server: /'; echo
ls -a $W/c1 | tr '\n' ' ' | sed 's/^/   client1: /'; echo
# removing a rule: debug.log should now be uploaded
printf '*.tmp\n*.bak\n' > $W/c0/.distribusyncignore
wait_for "debug.log uploaded once *.log rule removed" 10 test -f $W/master/debug.log || fails=$((fails+1))
echo "failures: $fails"
