#!/usr/bin/env bash
# The full policy stack of issue 15 as a peer-bench target ("gateway-full"), beside nginx and
# the registry-only gateway ("gateway-host"), interleaved, one pinned core each:
#   registry (REGISTRY_ONLY, the origin's ServiceEntry from peer-bench)
#   + a VirtualService on the origin: a header match (not taken), a header set, 2 retries
#   + a DENY AuthorizationPolicy (paths, a header) and an ALLOW one (loopback sources, GET)
#   + Istio metrics (always on) + traces sampled at 1% over OTLP/HTTP to a loopback sink.
# Every change to the request path is compared with this:
#   cargo build --release -p egress-gateway && bash benches/scripts/fullstack-bench.sh
# GATEWAY_CPUS=all TARGETS="origin nginx-auto" runs it on both cores against nginx-auto.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
peer=${PEER_BENCH:-$here/../shared/bench/peer-bench.sh}
gw=${GATEWAY_BIN:-$here/target/release/egress-gateway}
work=$(mktemp -d)
sink_port=${SINK_PORT:-38191}
python3 - "$sink_port" >"$work/sink.log" 2>&1 <<'PY' &
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", "0")))
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
sink=$!
trap 'kill $sink 2>/dev/null; rm -rf "$work"' EXIT

cat >"$work/full.yaml" <<'YAML'
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: origin, namespace: istio-system}
spec:
  hosts: [origin.test]
  http:
  - match: [{headers: {x-debug: {exact: "1"}}}]
    directResponse: {status: 418}
  - route: [{destination: {host: origin.test}}]
    headers: {request: {set: {x-via: egress}}}
    retries: {attempts: 2, retryOn: "connect-failure,reset,503"}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny, namespace: istio-system}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin*"]}}]
  - when: [{key: "request.headers[x-user]", values: ["evil*"]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow, namespace: istio-system}
spec:
  action: ALLOW
  rules:
  - from: [{source: {ipBlocks: ["127.0.0.0/8"]}}]
    to: [{operation: {methods: ["GET"]}}]
YAML
# Checked beside a stand-in for the origin's ServiceEntry, which peer-bench writes.
printf 'apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: origin}\nspec: {hosts: [origin.test], ports: [{number: 80, name: http, protocol: HTTP}], resolution: DNS}\n' >"$work/stub.yaml"
"$gw" check --config "$work/full.yaml" --config "$work/stub.yaml" >/dev/null

export SUT_CPUS=${GATEWAY_CPUS:-pin}
export SUT_NAME=gateway-full SUT_PORT=${SUT_PORT:-38175} SUT_HOST='{name}:{port}'
export SUT_CMD="exec $gw --config \$BENCH_TMP/../gateway-config --config $work/full.yaml \
  --listen 127.0.0.1:\$BENCH_SUT_PORT --admin 127.0.0.1:0 \
  --resolve origin.test:\$BENCH_ORIGIN_PORT:127.0.0.1 --outbound-policy registry-only \
  --otlp-endpoint http://127.0.0.1:$sink_port --trace-sampling 1"
GATEWAY_BIN=$gw GATEWAY_MODES=host TARGETS=${TARGETS:-"origin nginx"} PACED_RPS=${PACED_RPS:-0} \
  bash "$peer"
