#!/usr/bin/env bash
# Makes sure HAProxy is installed (the multi-broker test runs it in front of three brokers):
# installs Debian's haproxy package when the binary is missing and we are root. Prints the
# binary's path on stdout. Idempotent.
set -euo pipefail
. "$(dirname "$0")/apt.sh"

say() { echo "ensure-haproxy: $*" >&2; }

find_haproxy() { command -v haproxy 2>/dev/null || { [ -x /usr/sbin/haproxy ] && echo /usr/sbin/haproxy; }; }

if binary="$(find_haproxy)"; then
  echo "$binary"
  exit 0
fi
apt_install ensure-haproxy --no-install-recommends haproxy
binary="$(find_haproxy)" || { say "haproxy is still missing after apt-get install"; exit 1; }
echo "$binary"
