#!/usr/bin/env bash
# Resident memory of the gateway: idle with the embedded default config, then with N idle
# keep-alive client connections (each made one request through the gateway to a loopback
# origin and stays open), beside the bare-hyper floor (benches/src/bin/hyper_floor.rs).
#   cargo build --release -p egress-gateway -p egress-benches --bin hyper_floor
#   N=10000 bash benches/scripts/memory-bench.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
gw=${GATEWAY_BIN:-$root/target/release/egress-gateway}
floor=${FLOOR_BIN:-$root/target/release/hyper_floor}
n=${N:-10000}
ulimit -n $((n + 1000))
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
rss() { awk '/^VmRSS/{print $2}' "/proc/$1/status"; }
ready() { for _ in $(seq 1 100); do curl -s -o /dev/null "$1" && return 0; sleep 0.1; done; return 1; }

"$gw" --listen 127.0.0.1:18111 --admin 127.0.0.1:18110 >/dev/null 2>&1 & pids+=($!)
ready http://127.0.0.1:18110/healthz/ready
sleep 1
echo "gateway, default config, idle: $(rss "${pids[-1]}") kB RSS"
kill "${pids[-1]}"

python3 "$here/callgrind_client.py" 0 0 origin & pids+=($!)
sleep 0.5
"$gw" --config "$here/callgrind.yaml" --listen 127.0.0.1:18101 --admin 127.0.0.1:18100 \
  --resolve origin.test:18090:127.0.0.1 --threads 1 >/dev/null 2>&1 & pids+=($!)
ready http://127.0.0.1:18100/healthz/ready
echo -n "gateway (full policy stack of callgrind.yaml): "
python3 "$here/idle_conns.py" "$n" 18101 "${pids[-1]}"
BENCH_SUT_PORT=18102 BENCH_ORIGIN_HTTP=127.0.0.1:18090 "$floor" >/dev/null 2>&1 & pids+=($!)
sleep 0.5
echo -n "bare hyper floor (no policy): "
python3 "$here/idle_conns.py" "$n" 18102 "${pids[-1]}"
