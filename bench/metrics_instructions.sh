#!/usr/bin/env bash
# The cost of metrics and hot keys (issue 12) counted in instructions, which a shared, noisy
# machine does not change: the broker runs under `valgrind --tool=callgrind` once with
# everything on (metrics_listen scraped every second, latency_metrics, hot_keys = 10) and
# once with everything off, each serving the same `txbench run` (one-row updates, 8
# clients); the script prints the broker's instructions per committed transaction for each,
# and their ratio. Under valgrind the broker runs some 5 times slower, so a scrape a second
# weighs about 5 times more per transaction than at full speed: the ratio overstates the
# cost a little.
#
# Usage: bench/metrics_instructions.sh [DURATION]; DATABASE_SERVER names the server (default
# mysql://root@127.0.0.1:3306), on which the database txbench_metrics_cg is made. Needs
# valgrind and target/release/{txbroker,txbench}.
set -euo pipefail
cd "$(dirname "$0")/.."

duration="${1:-20s}"
url="${DATABASE_SERVER:-mysql://root@127.0.0.1:3306}/txbench_metrics_cg?prefer_socket=false"
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

common="database_url = \"$url\"
max_sessions = 128
log_level = \"warning\"
listen = \"127.0.0.1:17408\""
printf '%s\nmetrics_listen = "127.0.0.1:19408"\nlatency_metrics = true\nhot_keys = 10\n' "$common" > "$work/on.toml"
printf '%s\nlatency_metrics = false\nhot_keys = 0\n' "$common" > "$work/off.toml"
target/release/txbench run --target direct --database-url "$url" --clients 1 --duration 1s \
  --warmup 0s > /dev/null 2>&1

for which in on off; do
  valgrind --tool=callgrind --callgrind-out-file="$work/$which.out" \
    target/release/txbroker --config "$work/$which.toml" 2> "$work/$which.log" &
  broker=$!
  for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/17408) 2>/dev/null && break; sleep 0.25; done
  scraper=""
  if [ "$which" = on ]; then
    ( while sleep 1; do curl -s -o /dev/null http://127.0.0.1:19408/metrics || true; done ) &
    scraper=$!
  fi
  target/release/txbench run --target broker --broker-addr 127.0.0.1:17408 --database-url "$url" \
    --workload uncontended --clients 8 --duration "$duration" --warmup 1s --json \
    2>/dev/null > "$work/$which.json"
  [ -n "$scraper" ] && kill "$scraper"
  kill -TERM "$broker"
  wait "$broker" || true
done

python3 - "$work" <<'PY'
import json, re, sys
work = sys.argv[1]
per_tx = {}
for which in ("on", "off"):
    run = json.load(open(f"{work}/{which}.json"))
    instructions = int(re.search(r"Collected : (\d+)", open(f"{work}/{which}.log").read()).group(1))
    # Every transaction of the run, the 1 s warm-up counted at the measured rate.
    transactions = run["tx_per_s"] * (run["seconds"] + 1.0)
    per_tx[which] = instructions / transactions
    print(f"{which}: {run['tx_per_s']:.0f} tx/s under valgrind, {per_tx[which]:,.0f} broker instructions per tx")
print(f"on/off: {per_tx['on'] / per_tx['off']:.3f}")
PY
