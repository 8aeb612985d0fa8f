#!/usr/bin/env bash
# Makes sure HAProxy is installed (the multi-broker test runs it in front of three brokers):
# installs Debian's haproxy package when the binary is missing and we are root. Prints the
# binary's path on stdout. Idempotent.
set -euo pipefail

say() { echo "ensure-haproxy: $*" >&2; }

find_haproxy() { command -v haproxy 2>/dev/null || { [ -x /usr/sbin/haproxy ] && echo /usr/sbin/haproxy; }; }

if binary="$(find_haproxy)"; then
  echo "$binary"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  say "haproxy is not installed and we are not root: install it (apt-get install haproxy)"
  exit 1
fi
say "installing haproxy"
export DEBIAN_FRONTEND=noninteractive
# Other jobs on the machine may hold the dpkg lock for a while.
apt-get -o DPkg::Lock::Timeout=300 update -qq >/dev/null
apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends haproxy >/dev/null
binary="$(find_haproxy)" || { say "haproxy is still missing after apt-get install"; exit 1; }
echo "$binary"
