#!/usr/bin/env bash
# Hot reload of a large registry under load: the gateway (release build) serves a loopback
# nginx origin through a configuration of HOSTS generated ServiceEntry hosts plus the origin's;
# wrk drives Host-routed keep-alive requests for DURATION seconds, once without reloads (the
# baseline) and once with RELOADS SIGHUPs spread over the run. Prints both latency summaries,
# the errors of each run (any non-2xx or socket error is a lost request) and each reload's
# duration from the gateway's log. With RPS set, each connection paces its requests (wrk's
# delay) so that the 16 connections send about RPS requests/s: the light-load latency.
#   cargo build --release -p egress-gateway -p egress-benches
#   HOSTS=100000 DURATION=12 RELOADS=3 bash benches/scripts/reload-bench.sh
set -euo pipefail
HOSTS="${HOSTS:-100000}"; DURATION="${DURATION:-12}"; RELOADS="${RELOADS:-3}"; RPS="${RPS:-0}"
GW="${GATEWAY_BIN:-target/release/egress-gateway}"
SCALE="${SCALE_BIN:-target/release/registry_scale}"
tmp="$(mktemp -d)"; pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT
mkdir -p "$tmp/config" "$tmp/nginx"
"$SCALE" "$HOSTS" "$tmp/config/registry.yaml"
origin_port=38291; gw_port=38292; admin_port=38293
cat > "$tmp/nginx/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $tmp/nginx/nginx.pid; error_log /dev/null;
events { worker_connections 1024; }
http { access_log off; server { listen 127.0.0.1:$origin_port; location / { return 200 "ok"; } } }
CONF
taskset -c 0 nginx -c "$tmp/nginx/nginx.conf" -p "$tmp/nginx" & pids+=($!)
cat > "$tmp/config/origin.yaml" <<CONF
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: origin, namespace: bench}
spec:
  hosts: [origin.test]
  ports: [{number: $origin_port, name: http, protocol: HTTP}]
  resolution: DNS
CONF
taskset -c 1 "$GW" --config "$tmp/config" --listen "127.0.0.1:$gw_port" --admin "127.0.0.1:$admin_port" \
  --resolve "origin.test:$origin_port:127.0.0.1" --threads 1 --watch-interval 1h > "$tmp/gw.log" 2>&1 & gw=$!; pids+=($gw)
for _ in $(seq 1 300); do curl -sf -o /dev/null "http://127.0.0.1:$admin_port/healthz/ready" && break; sleep 0.1; done
pace=()
if ((RPS > 0)); then
  printf 'function delay() return %d end\n' $(( 16 * 1000 / RPS )) > "$tmp/pace.lua"
  pace=(-s "$tmp/pace.lua")
fi
run() {
  taskset -c 0 wrk -t1 -c16 -d"${DURATION}s" --latency "${pace[@]}" \
    -H "Host: origin.test:$origin_port" "http://127.0.0.1:$gw_port/"
}
echo "== baseline, no reload"
run | grep -E "Latency|50%|90%|99%|Requests/sec|Non-2xx|Socket errors|requests in"
echo "== $RELOADS reloads of $HOSTS hosts during the run"
( step=$(( DURATION / (RELOADS + 1) )); for i in $(seq 1 "$RELOADS"); do sleep "$step"; kill -HUP "$gw"; done ) & reloader=$!
run | grep -E "Latency|50%|90%|99%|Requests/sec|Non-2xx|Socket errors|requests in"
wait "$reloader"
sleep 1
grep "reload" "$tmp/gw.log" | sed -E "s/\x1b\[[0-9;]*m//g" | grep -oE "took_ms=[0-9.]+" | sed "s/^/  /"
