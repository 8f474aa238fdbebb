#!/usr/bin/env bash
# Issue 9 item 5: root with a long path + a 4,000-byte remote path.
set -u; . $(dirname "$0")/lib.sh
W=$(mktemp -d /tmp/ds-acc-lp.XXXX); trap cleanup EXIT
seg=$(printf "r%.0s" $(seq ${SEGLEN:-100})); long=$W; for i in $(seq ${NSEG:-3}); do long=$long/$seg; done
mkdir -p "$long"; echo "root length: ${#long}"
start_server_long() { PORT=$(port); export DISTRIBUSYNC_SERVER="http://127.0.0.1:$PORT"
  RUST_LOG=warn "$BIN" serve --listen 127.0.0.1:$PORT --root "$long/master" 2>"$W/server.log" & SERVER_PID=$!
  for _ in $(seq 200); do "$BIN" ls >/dev/null 2>&1 && return 0; sleep 0.05; done; echo no server; cat $W/server.log; exit 1; }
start_server_long
mk() { local p="" s; while [ $(( ${#p} + 251 )) -lt ${1} ]; do s=$(printf "$2%.0s" $(seq 250)); p="${p:+$p/}$s"; done; local rest=$(( $1 - ${#p} - 1 - ${#3} )); p="$p/$(printf "$2%.0s" $(seq $rest))$3"; echo "$p"; }
P=$(mk 4000 a .txt); Q=$(mk 4000 b .txt); echo "remote path lengths: ${#P} ${#Q}"
fails=0
t() { local d=$1; shift; if out=$("$@" 2>&1); then echo "  ok   $d"; else echo "  FAIL $d: ${out:0:300}"; fails=$((fails+1)); fi; }
head -c 5000000 /dev/urandom > $W/data.bin
t "put 4000-byte path" "$BIN" put $W/data.bin "$P"
t "ls lists it" bash -c "'$BIN' ls | grep -qF '$P'"
t "stat" "$BIN" stat "$P"
mkdir -p $W/dl; t "get" bash -c "cd $W/dl && '$BIN' get '$P' out.bin && cmp out.bin $W/data.bin"
t "mv to another 4000-byte path" "$BIN" mv "$P" "$Q"
t "ls shows new, not old" bash -c "'$BIN' ls | grep -qF '$Q' && ! '$BIN' ls | grep -qF '$P'"
t "get after mv" bash -c "cd $W/dl && '$BIN' get '$Q' out2.bin && cmp out2.bin $W/data.bin"
D1=${Q%%/*}; t "mv folder (first segment) to new name" "$BIN" mv "$D1" "zz"
R=zz/${Q#*/}; t "get under renamed folder" bash -c "cd $W/dl && '$BIN' get '$R' out3.bin && cmp out3.bin $W/data.bin"
t "ls prefix zz" bash -c "'$BIN' ls zz | grep -qF '$R'"
t "rm" "$BIN" rm "$R"
t "ls empty" bash -c "[ -z \"\$('$BIN' ls)\" ]"
# put -r of a tree into a long remote folder
mkdir -p $W/tree/sub; echo 1 > $W/tree/one; echo 2 > $W/tree/sub/two
F=$(mk 3980 c "")
t "put -r into a long folder" "$BIN" put -r $W/tree "$F/"
"$BIN" ls | sed 's/^/   listing: /' | cut -c1-80
t "rm files of put -r" bash -c "for p in \$('$BIN' ls); do '$BIN' rm \"\$p\" || exit 1; done"
# server restart reconciles long paths (no spurious deletes)
"$BIN" put $W/data.bin "$P" >/dev/null 2>&1
kill $SERVER_PID; wait $SERVER_PID 2>/dev/null; start_server_long
t "after restart: still listed and gettable" bash -c "cd $W/dl && '$BIN' get '$P' out4.bin && cmp out4.bin $W/data.bin"
t "after restart: rm" "$BIN" rm "$P"
grep -iE "error|warn" $W/server.log | head -5 | cut -c1-300
echo "failures: $fails"
