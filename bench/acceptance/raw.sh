set -u; . $(dirname "$0")/lib.sh
W=$(mktemp -d /tmp/ds-acc-raw.XXXX); trap cleanup EXIT
start_server
${PY:-python3} $(dirname "$0")/raw.py 127.0.0.1:$PORT
echo "CLI job with a 100 KiB id:"; id=$(head -c 102400 /dev/zero | tr '\0' j); "$BIN" job "$id" 2>&1 | wc -c
"$BIN" job "$id" 2>&1 | cut -c1-200
echo "CLI stat 100 KiB path:"; "$BIN" stat "$id" 2>&1 | wc -c
ls -la $W/master | head; ls $W/master/.distribusync/staging/* 2>/dev/null | head
