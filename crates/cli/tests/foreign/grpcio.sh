#!/usr/bin/env bash
# Runs grpcio_client.py against a server: makes (once) a venv with pinned
# grpcio and grpcio-tools under target/py-venv, generates Python stubs from
# proto/ into a temporary folder, then runs the client. Exits non-zero when
# anything fails, the client included.
#
#   grpcio.sh TARGET CA_FILE      (token in DISTRIBUSYNC_TOKEN)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../../../.." && pwd)
VENV=${DISTRIBUSYNC_PY_VENV:-$REPO/target/py-venv}
GRPCIO=1.85.1
if ! "$VENV/bin/python" -c "import grpc, grpc_tools; assert grpc.__version__ == '$GRPCIO'" 2>/dev/null; then
  # One test binary may run this from several tests: one venv maker at a time.
  mkdir -p "$(dirname "$VENV")"
  exec 9>"$VENV.lock"
  flock 9
  if ! "$VENV/bin/python" -c "import grpc, grpc_tools; assert grpc.__version__ == '$GRPCIO'" 2>/dev/null; then
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "grpcio==$GRPCIO" "grpcio-tools==$GRPCIO"
  fi
  flock -u 9
fi
STUBS=$(mktemp -d "${TMPDIR:-/tmp}/ds-py-stubs.XXXXXX")
trap 'rm -rf "$STUBS"' EXIT
"$VENV/bin/python" -m grpc_tools.protoc -I "$REPO/proto" --python_out="$STUBS" --grpc_python_out="$STUBS" \
  distribusync/v1/files.proto distribusync/v1/compute.proto
touch "$STUBS/distribusync/__init__.py" "$STUBS/distribusync/v1/__init__.py"
"$VENV/bin/python" "$HERE/grpcio_client.py" "$STUBS" "$1" "$2"
