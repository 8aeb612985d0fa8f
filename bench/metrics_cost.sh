#!/usr/bin/env bash
# The cost of metrics and hot keys (issue 12): two txbroker processes on one database, one
# with everything on (metrics_listen, scraped every second like a demanding Prometheus;
# latency_metrics; hot_keys = 10) and one with everything off (no listener,
# latency_metrics = false, hot_keys = 0), measured alternately with `txbench run
# --broker-addr` (on, off, off, on, ... so that a drift of the machine hits both alike), for
# each workload. Prints every run and, per workload, the median throughput of each, their
# ratio, and the median of each round's on/off ratio (adjacent runs, so less hurt by drift). txbench compare runs one broker configuration only, hence two external brokers.
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
target/release/txbroker --config "$work/on.toml" 2> "$work/on.log" & pids+=($!); on_pid=$!
target/release/txbroker --config "$work/off.toml" 2> "$work/off.log" & pids+=($!); off_pid=$!
# A scraper as demanding as a 1 s scrape_interval, for the whole measurement.
( while sleep 1; do curl -s -o /dev/null http://127.0.0.1:19406/metrics || true; done ) & pids+=($!)
for port in 17406 17407 19406; do
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
done

# CPU time (user + system, in clock ticks) a process has used so far.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

run() { # address pid workload-args... -> "tx/s µs-of-broker-CPU-per-tx"
  local before after
  before="$(cpu_ticks "$2")"
  target/release/txbench run --target broker --broker-addr "$1" --database-url "$url" \
    --clients 32 --duration "$duration" --warmup 2s --json "${@:3}" 2>/dev/null > "$work/run.json"
  after="$(cpu_ticks "$2")"
    # The broker's CPU over the whole run per transaction, the 2 s warm-up counted at the
  # measured rate.
  python3 - "$work/run.json" "$((after - before))" "$(getconf CLK_TCK)" <<'PY'
import json, sys
run = json.load(open(sys.argv[1]))
ticks, hz = int(sys.argv[2]), int(sys.argv[3])
transactions = run["tx_per_s"] * (run["seconds"] + 2.0)
print(run["tx_per_s"], ticks / hz * 1e6 / max(transactions, 1.0))
PY
}

for workload in "uncontended" "transfer --hot 2"; do
  on=(); off=(); on_cpu=(); off_cpu=()
  for round in $(seq 1 "$rounds"); do
    if (( round % 2 )); then order="on off"; else order="off on"; fi
    for which in $order; do
      if [ "$which" = on ]; then address=127.0.0.1:17406 pid=$on_pid; else address=127.0.0.1:17407 pid=$off_pid; fi
      # shellcheck disable=SC2086
      read -r figure cpu <<< "$(run "$address" "$pid" --workload $workload)"
      echo "$workload round $round $which: $figure tx/s, broker CPU $cpu µs/tx"
      if [ "$which" = on ]; then on+=("$figure"); on_cpu+=("$cpu"); else off+=("$figure"); off_cpu+=("$cpu"); fi
    done
  done
  python3 - "$workload" "${on[*]}" "${off[*]}" "${on_cpu[*]}" "${off_cpu[*]}" <<'PY'
import statistics, sys
workload = sys.argv[1]
on, off, on_cpu, off_cpu = ([float(x) for x in arg.split()] for arg in sys.argv[2:6])
m_on, m_off = statistics.median(on), statistics.median(off)
# Each round's two runs are adjacent in time: their ratio cancels what drifts slower than a round.
pairs = statistics.median(a / b for a, b in zip(on, off))
print(f"{workload}: median on {m_on:.0f} tx/s, off {m_off:.0f} tx/s, ratio of medians {m_on / m_off:.3f}, "
      f"median of the rounds' on/off {pairs:.3f} ({(pairs - 1) * 100:+.1f} %)")
c_on, c_off = statistics.median(on_cpu), statistics.median(off_cpu)
print(f"{workload}: broker CPU per committed tx, median on {c_on:.1f} µs, off {c_off:.1f} µs, "
      f"on/off {c_on / c_off:.3f}")
PY
done
