set -u; . $(dirname "$0")/lib.sh
W=$(mktemp -d /tmp/ds-acc-mt.XXXX); trap cleanup EXIT
start_server
echo old > $W/old.txt; touch -d '1969-07-20 20:17:00 UTC' $W/old.txt; stat -c '%y %Y' $W/old.txt
"$BIN" put $W/old.txt old.txt; echo "put rc=$?"
"$BIN" stat old.txt
echo far > $W/far.txt; touch -d '2300-01-01' $W/far.txt; stat -c '%y %Y' $W/far.txt
"$BIN" put $W/far.txt far.txt; echo "put rc=$?"
