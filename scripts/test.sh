#!/usr/bin/env bash
# Runs the whole test suite against a real MariaDB, starting (and installing) a local one
# first when nothing answers at the database URL (and Prometheus, for tests/monitoring.rs, when
# missing): the Rust unit and integration tests, the
# doc tests, then the Python client's tests against the freshly built broker.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-mariadb.sh
scripts/ensure-prometheus.sh
cargo test --all-targets
cargo test --doc
cargo build --bin txbroker
scripts/test-python.sh
