#!/usr/bin/env bash
# Runs the broker with config/txbroker.toml, starting (and installing) a local MariaDB first
# when nothing answers at the database URL. Extra arguments go to txbroker.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-mariadb.sh
exec cargo run --release --bin txbroker -- --config config/txbroker.toml "$@"
