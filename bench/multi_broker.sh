#!/usr/bin/env bash
# What database coordination costs (issue 15): alternating txbench runs (A B C A B C ...)
# against external brokers: one broker with coordination = "local", one with "database",
# and three with "database" behind HAProxy (deploy/haproxy.cfg, addresses replaced), all on
# one MariaDB database. Prints each run and the medians per setting.
#
#   bench/multi_broker.sh [rounds] [txbench options...]
#   bench/multi_broker.sh 3 --workload transfer --hot 10 --clients 32
#
# Needs target/release/txbroker and txbench (cargo build --release --bin txbroker --bin
# txbench) and HAProxy (scripts/ensure-haproxy.sh). DATABASE_URL names the database
# (default mysql://root@127.0.0.1:3306/txbench?prefer_socket=false); txbench resets it.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"
shift || true
url="${DATABASE_URL:-mysql://root@127.0.0.1:3306/txbench?prefer_socket=false}"
haproxy="$(scripts/ensure-haproxy.sh)"
work="$(mktemp -d)"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_broker() { # name coordination: sets $started to its host:port once it listens
  local port; port="$(free_port)"
  printf 'database_url = "%s"\ncoordination = "%s"\nlog_level = "warning"\n' "$url" "$2" >"$work/$1.toml"
  target/release/txbroker --config "$work/$1.toml" --listen "127.0.0.1:$port" \
      >/dev/null 2>"$work/$1.log" &
  pids+=($!)
  wait_port "$port"
  started="127.0.0.1:$port"
}

wait_port() {
  for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
  echo "nothing listens on $1" >&2; return 1
}

start_broker local local; local_one="$started"
start_broker database database; database_one="$started"
three=()
for name in db1 db2 db3; do start_broker "$name" database; three+=("$started"); done
proxy_port="$(free_port)"
sed -e "s/127.0.0.1:7306/127.0.0.1:$proxy_port/" -e "s/127.0.0.1:7316/${three[0]}/" \
    -e "s/127.0.0.1:7317/${three[1]}/" -e "s/127.0.0.1:7318/${three[2]}/" \
    deploy/haproxy.cfg >"$work/haproxy.cfg"
"$haproxy" -db -f "$work/haproxy.cfg" >/dev/null 2>"$work/haproxy.log" &
pids+=($!)
wait_port "$proxy_port"

declare -A address=([local-1]="$local_one" [database-1]="$database_one" [database-3]="127.0.0.1:$proxy_port")
settings=(local-1 database-1 database-3)
for round in $(seq 1 "$rounds"); do
  for setting in "${settings[@]}"; do
    target/release/txbench run --target broker --broker-addr "${address[$setting]}" \
        --database-url "$url" --json "$@" 2>/dev/null \
      | python3 -c 'import json,sys; r=json.load(sys.stdin); print(sys.argv[1], sys.argv[2], r["tx_per_s"], r["latency"]["p99_ms"], r["deadlocks"], r["failed"], r["check"]["ok"])' "$setting" "$round" \
      | tee -a "$work/runs.txt"
  done
done
echo "setting: median tx/s, median p99 ms, deadlocks (seen by the broker answering stats), failed, checks"
python3 - "$work/runs.txt" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
base = None
for setting in ["local-1", "database-1", "database-3"]:
    mine = [r for r in rows if r[0] == setting]
    tps = statistics.median(float(r[2]) for r in mine)
    p99 = statistics.median(float(r[3]) for r in mine)
    base = base or tps
    print(f"{setting}: {tps:.0f} tx/s ({tps / base:.2f}x local-1), p99 {p99:.1f} ms, "
          f"deadlocks {sum(int(r[4]) for r in mine)}, failed {sum(int(r[5]) for r in mine)}, "
          f"checks {'ok' if all(r[6] == 'True' for r in mine) else 'FAILED'}")
PY
