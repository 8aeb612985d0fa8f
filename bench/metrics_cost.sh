#!/usr/bin/env bash
# The cost of metrics and hot keys (issue 12): two txbroker processes, one with everything on
# (metrics_listen, scraped every second like a demanding Prometheus; latency_metrics;
# hot_keys = 10) and one with everything off (no listener, latency_metrics = false,
# hot_keys = 0), each on a database of its own on the same server, measured AT THE SAME TIME:
# in each round one `txbench run --broker-addr` per broker, 16 clients each, start together,
# so that whatever the machine does during a round it does to both. (Measured one after the
# other, the two drifted apart by up to 20 % between adjacent runs on this 2-core machine,
# more than the cost to resolve.) Prints each round's throughputs and their ratio, each
# broker's CPU per transaction, and the medians.
#
# Usage: bench/metrics_cost.sh [ROUNDS] [DURATION]; DATABASE_SERVER names the server
# (default mysql://root@127.0.0.1:3306); the databases txbench_metrics_on and
# txbench_metrics_off are made there. Needs target/release/{txbroker,txbench}.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds="${1:-5}"
duration="${2:-8s}"
server="${DATABASE_SERVER:-mysql://root@127.0.0.1:3306}"
on_url="$server/txbench_metrics_on?prefer_socket=false"
off_url="$server/txbench_metrics_off?prefer_socket=false"
work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

common='max_sessions = 128
log_level = "warning"'
printf '%s\ndatabase_url = "%s"\nlisten = "127.0.0.1:17406"\nmetrics_listen = "127.0.0.1:19406"\nlatency_metrics = true\nhot_keys = 10\n' \
  "$common" "$on_url" > "$work/on.toml"
printf '%s\ndatabase_url = "%s"\nlisten = "127.0.0.1:17407"\nlatency_metrics = false\nhot_keys = 0\n' \
  "$common" "$off_url" > "$work/off.toml"

# Each database and its table exist before a broker opens a session on it.
for url in "$on_url" "$off_url"; do
  target/release/txbench run --target direct --database-url "$url" --clients 1 \
    --duration 1s --warmup 0s > /dev/null 2>&1
done

target/release/txbroker --config "$work/on.toml" 2> "$work/on.log" & pids+=($!); on_pid=$!
target/release/txbroker --config "$work/off.toml" 2> "$work/off.log" & pids+=($!); off_pid=$!
# A scraper as demanding as a 1 s scrape_interval, for the whole measurement.
( while sleep 1; do curl -s -o /dev/null http://127.0.0.1:19406/metrics || true; done ) & pids+=($!)
for port in 17406 17407 19406; do
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
done

# CPU time (user + system, in clock ticks) a process has used so far.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

run() { # address url json-file workload-args...
  target/release/txbench run --target broker --broker-addr "$1" --database-url "$2" \
    --clients 16 --duration "$duration" --warmup 2s --json "${@:4}" 2>/dev/null > "$3"
}

for workload in "uncontended" "transfer --hot 2"; do
  rows=()
  for round in $(seq 1 "$rounds"); do
    on_before="$(cpu_ticks "$on_pid")" off_before="$(cpu_ticks "$off_pid")"
    # shellcheck disable=SC2086
    run 127.0.0.1:17406 "$on_url" "$work/on.json" --workload $workload & on_run=$!
    # shellcheck disable=SC2086
    run 127.0.0.1:17407 "$off_url" "$work/off.json" --workload $workload
    wait "$on_run"
    on_ticks=$(( $(cpu_ticks "$on_pid") - on_before ))
    off_ticks=$(( $(cpu_ticks "$off_pid") - off_before ))
    row="$(python3 - "$work/on.json" "$work/off.json" "$on_ticks" "$off_ticks" "$(getconf CLK_TCK)" <<'PY'
import json, sys
on, off = (json.load(open(path)) for path in sys.argv[1:3])
on_ticks, off_ticks, hz = (int(arg) for arg in sys.argv[3:6])
# CPU over the whole run (the 2 s of warm-up counted at the measured rate) per transaction.
def cpu(run, ticks):
    return ticks / hz * 1e6 / max(run["tx_per_s"] * (run["seconds"] + 2.0), 1.0)
print(on["tx_per_s"], off["tx_per_s"], cpu(on, on_ticks), cpu(off, off_ticks))
PY
)"
    read -r on_tx off_tx on_cpu off_cpu <<< "$row"
    printf '%s round %s: on %.0f tx/s, off %.0f tx/s, on/off %.3f; broker CPU on %.1f µs/tx, off %.1f µs/tx\n' \
      "$workload" "$round" "$on_tx" "$off_tx" "$(python3 -c "print($on_tx / $off_tx)")" "$on_cpu" "$off_cpu"
    rows+=("$row")
  done
  printf '%s\n' "${rows[@]}" | python3 -c "
import statistics, sys
rows = [[float(x) for x in line.split()] for line in sys.stdin if line.strip()]
ratio = statistics.median(on / off for on, off, _, _ in rows)
cpu = statistics.median(c_on / c_off for _, _, c_on, c_off in rows)
print(f'$workload: median of the rounds\' on/off throughput {ratio:.3f} ({(ratio - 1) * 100:+.1f} %), '
      f'broker CPU per tx on/off {cpu:.3f}, over {len(rows)} rounds')
"
done
