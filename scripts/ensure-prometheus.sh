#!/usr/bin/env bash
# Makes sure `prometheus` and `promtool` are installed, for the monitoring tests
# (tests/monitoring.rs): installs Debian's `prometheus` package when they are missing and we
# are root. Installing starts no server; each test runs its own on a free port. Idempotent.
set -euo pipefail
. "$(dirname "$0")/apt.sh"

say() { echo "ensure-prometheus: $*" >&2; }

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
  exit 0
fi
# No recommends: the exporters it recommends are not needed. The package's service is not
# wanted either; without an init system its start-up is skipped, and where there is one it
# only scrapes itself on its default port. The package brings promtool.
apt_install ensure-prometheus --no-install-recommends prometheus
command -v promtool >/dev/null 2>&1 || { say "promtool missing after install"; exit 1; }
say "prometheus $(prometheus --version 2>&1 | head -1)"
