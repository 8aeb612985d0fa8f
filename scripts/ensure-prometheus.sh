#!/usr/bin/env bash
# Makes sure `prometheus` and `promtool` are installed, for the monitoring tests
# (tests/monitoring.rs): installs Debian's `prometheus` package when they are missing and we
# are root. Installing starts no server; each test runs its own on a free port. Idempotent.
set -euo pipefail

say() { echo "ensure-prometheus: $*" >&2; }

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  say "prometheus is not installed and we are not root: install it (apt-get install prometheus)"
  exit 1
fi
say "installing prometheus (with promtool)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
# No recommends: the exporters it recommends are not needed. The package's service is not
# wanted either; without an init system its start-up is skipped, and where there is one it
# only scrapes itself on its default port.
apt-get install -y -qq --no-install-recommends prometheus >/dev/null
command -v promtool >/dev/null 2>&1 || { say "promtool missing after install"; exit 1; }
say "prometheus $(prometheus --version 2>&1 | head -1)"
