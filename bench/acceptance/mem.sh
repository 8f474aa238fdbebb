set -u; . $(dirname "$0")/lib.sh
W=$(mktemp -d /tmp/ds-acc-mem.XXXX); trap cleanup EXIT
start_server --services compute
for s in "$@"; do echo "== scenario $s"; ${PY:-python3} $(dirname "$0")/mem.py 127.0.0.1:$PORT $SERVER_PID $s; done
