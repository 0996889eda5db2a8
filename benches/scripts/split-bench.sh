#!/usr/bin/env bash
# Weighted 50/50 split, gateway vs nginx (split_clients), through ../shared/bench/peer-bench.sh.
# Both send half the requests to each of two upstreams that are the same bench origin, so
# the numbers measure the cost of splitting, not the origin.
#   cargo build --release -p egress-gateway && bash benches/scripts/split-bench.sh
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
peer=${PEER_BENCH:-$here/../shared/bench/peer-bench.sh}
gw=${GATEWAY_BIN:-$here/target/release/egress-gateway}

export SUT_NAME=gateway-split SUT_PORT=${SUT_PORT:-38150} SUT_HOST='split.test'
export SUT_CMD="mkdir -p \"\$BENCH_TMP\" && cat > \"\$BENCH_TMP/split.yaml\" <<YAML
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: split}
spec:
  hosts: [split.test]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - {address: 127.0.0.1, ports: {http: \$BENCH_ORIGIN_PORT}, labels: {half: a}}
  - {address: 127.0.0.1, ports: {http: \$BENCH_ORIGIN_PORT}, labels: {half: b}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: split}
spec:
  host: split.test
  subsets: [{name: a, labels: {half: a}}, {name: b, labels: {half: b}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: split}
spec:
  hosts: [split.test]
  http:
  - route:
    - {destination: {host: split.test, subset: a}, weight: 50}
    - {destination: {host: split.test, subset: b}, weight: 50}
YAML
exec $gw --config \"\$BENCH_TMP/split.yaml\" --listen 127.0.0.1:\$BENCH_SUT_PORT --admin 127.0.0.1:0"

export SUT2_NAME=nginx-split SUT2_PORT=${SUT2_PORT:-38151}
export SUT2_CMD="mkdir -p \"\$BENCH_TMP\" && cat > \"\$BENCH_TMP/nginx.conf\" <<NGINX
worker_processes 1;
daemon off;
pid \$BENCH_TMP/nginx.pid;
error_log \$BENCH_TMP/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  upstream a { server \$BENCH_ORIGIN_HTTP; keepalive 128; }
  upstream b { server \$BENCH_ORIGIN_HTTP; keepalive 128; }
  split_clients \"\\\$request_id\" \\\$half { 50% a; * b; }
  server {
    listen 127.0.0.1:\$BENCH_SUT_PORT;
    location / { proxy_pass http://\\\$half; proxy_http_version 1.1; proxy_set_header Connection \"\"; }
  }
}
NGINX
exec nginx -c \"\$BENCH_TMP/nginx.conf\""

TARGETS=${TARGETS:-"origin nginx"} PACED_RPS=${PACED_RPS:-0} exec bash "$peer"
