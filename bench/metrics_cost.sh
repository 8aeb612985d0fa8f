#!/usr/bin/env bash
# The cost of metrics and hot keys (issue 12): two txbroker processes on one database, one
# with everything on (metrics_listen, scraped every second like a demanding Prometheus;
# latency_metrics; hot_keys = 10) and one with everything off (no listener,
# latency_metrics = false, hot_keys = 0), measured alternately with `txbench run
# --broker-addr` (on, off, off, on, ... so that a drift of the machine hits both alike), for
# each workload. Prints every run and, per workload, the median throughput of each and their
# ratio. txbench compare runs one broker configuration only, hence two external brokers.
#
# Usage: bench/metrics_cost.sh [ROUNDS] [DURATION]; DATABASE_URL names the database (its
# own, never a shared one). Needs target/release/{txbroker,txbench}.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds="${1:-3}"
duration="${2:-10s}"
url="${DATABASE_URL:-mysql://root@127.0.0.1:3306/txbench?prefer_socket=false}"
work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

common="database_url = \"$url\"
max_sessions = 128
log_level = \"warning\""
printf '%s\nlisten = "127.0.0.1:17406"\nmetrics_listen = "127.0.0.1:19406"\nlatency_metrics = true\nhot_keys = 10\n' \
  "$common" > "$work/on.toml"
printf '%s\nlisten = "127.0.0.1:17407"\nlatency_metrics = false\nhot_keys = 0\n' \
  "$common" > "$work/off.toml"
target/release/txbroker --config "$work/on.toml" 2> "$work/on.log" & pids+=($!)
target/release/txbroker --config "$work/off.toml" 2> "$work/off.log" & pids+=($!)
# A scraper as demanding as a 1 s scrape_interval, for the whole measurement.
( while sleep 1; do curl -s -o /dev/null http://127.0.0.1:19406/metrics || true; done ) & pids+=($!)
for port in 17406 17407 19406; do
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
done

run() { # workload-args... -> tx/s
  target/release/txbench run --target broker --broker-addr "$1" --database-url "$url" \
    --clients 32 --duration "$duration" --warmup 2s --json "${@:2}" 2>/dev/null \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["tx_per_s"])'
}

median() { python3 -c 'import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }

for workload in "uncontended" "transfer --hot 2"; do
  on=(); off=()
  for round in $(seq 1 "$rounds"); do
    if (( round % 2 )); then order="on off"; else order="off on"; fi
    for which in $order; do
      if [ "$which" = on ]; then address=127.0.0.1:17406; else address=127.0.0.1:17407; fi
      # shellcheck disable=SC2086
      figure="$(run "$address" --workload $workload)"
      echo "$workload round $round $which: $figure tx/s"
      if [ "$which" = on ]; then on+=("$figure"); else off+=("$figure"); fi
    done
  done
  m_on="$(median "${on[@]}")"; m_off="$(median "${off[@]}")"
  python3 -c "import sys; on,off=float(sys.argv[1]),float(sys.argv[2]); print(f'$workload: median on {on:.0f} tx/s, off {off:.0f} tx/s, on/off {on/off:.3f} ({(on/off-1)*100:+.1f} %)')" "$m_on" "$m_off"
done
