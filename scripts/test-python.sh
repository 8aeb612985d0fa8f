#!/usr/bin/env bash
# Runs the Python client's checks (mypy --strict, ruff) and tests (clients/python/tests,
# the wheel build included) against a real txbroker and MariaDB. Creates .venv-python in the
# repo when missing, installs the client with its dev extra into it from PyPI,
# builds the debug txbroker when missing (in cargo's target directory, wherever
# CARGO_TARGET_DIR or a cargo config puts it; TXBROKER_BIN overrides the binary), and runs
# pytest. Extra arguments go to pytest. Exits non-zero when anything fails.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"
venv="$repo/.venv-python"

. scripts/apt.sh

if ! command -v python3 >/dev/null 2>&1; then
    echo "test-python: python3 is missing; installing it" >&2
    apt_install test-python python3 python3-venv python3-pip
fi

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
    rm -rf "$venv"
    if ! python3 -m venv "$venv" 2>/dev/null; then
        echo "test-python: python3 -m venv failed; installing python3-venv" >&2
        rm -rf "$venv"
        apt_install test-python python3-venv python3-pip
        python3 -m venv "$venv"
    fi
fi

pip_install() { "$venv/bin/python" -m pip install -q --disable-pip-version-check "$@"; }
# The client is installed editable with its dev extra (pytest, SQLAlchemy, PyMySQL, mypy, ruff,
# build): again whenever clients/python/pyproject.toml changed since the last install (its
# dependencies and the SQLAlchemy entry points live there), or the client comes from elsewhere.
stamp="$venv/.txbroker-pyproject.sha256"
wanted="$(sha256sum clients/python/pyproject.toml | cut -d' ' -f1)"
installed="$("$venv/bin/python" -c 'import msgpack, txbroker; print(txbroker.__file__)' 2>/dev/null || true)"
case "$installed" in
    "$repo/clients/python/txbroker/"*) [ "$(cat "$stamp" 2>/dev/null)" = "$wanted" ] || installed="" ;;
    *) installed="" ;;
esac
if [ -z "$installed" ]; then
    pip_install -e "clients/python[dev]"
    echo "$wanted" > "$stamp"
fi

echo "test-python: mypy --strict and ruff" >&2
(cd clients/python && "$venv/bin/python" -m mypy)
"$venv/bin/python" -m ruff check -q --config clients/python/pyproject.toml clients/python examples/python \
    bench/python_dbapi.py

if [ -z "${TXBROKER_BIN:-}" ]; then
    # Cargo knows where its builds go (CARGO_TARGET_DIR, build.target-dir, or target/);
    # assuming target/ would miss the binary for anyone who moves it.
    target_dir="$(cargo metadata --format-version 1 --no-deps \
        | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
    if [ ! -x "$target_dir/debug/txbroker" ]; then
        cargo build --bin txbroker
    fi
    export TXBROKER_BIN="$target_dir/debug/txbroker"
fi

exec "$venv/bin/python" -m pytest -q clients/python/tests "$@"
