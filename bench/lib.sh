# Shared by the bench scripts: sourced, not run.

# Installs a Debian package when COMMAND is missing: need COMMAND PACKAGE.
need() {
  if ! command -v "$1" >/dev/null; then
    echo "installing $2 from Debian's packages..." >&2
    (apt-get update -qq && apt-get install -y -qq "$2") >/dev/null
  fi
}

# A free TCP port on 127.0.0.1.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Starts an rsync daemon serving module "bench" from DIR on PORT; sets
# RSYNCD_PID. Usage: start_rsyncd WORK DIR PORT
start_rsyncd() {
  cat > "$1/rsyncd.conf" <<CONF
pid file = $1/rsyncd.pid
use chroot = false
uid = $(id -un)
gid = $(id -gn)
[bench]
  path = $2
  read only = false
CONF
  rsync --daemon --no-detach --address=127.0.0.1 --port="$3" --config="$1/rsyncd.conf" &
  RSYNCD_PID=$!
}

# Writes dirty pages out and drops the page cache (as root; else only
# `sync`), so a timed transfer starts from a flushed cache.
flush() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }

# What `flush` can do here: "page cache dropped" as root, else "sync only".
flush_kind() { if [ -w /proc/sys/vm/drop_caches ]; then echo "page cache dropped"; else echo "sync only: not root"; fi; }
