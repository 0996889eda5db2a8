#!/usr/bin/env bash
# Telemetry cost under load, through ../shared/bench/peer-bench.sh: the gateway as it runs by
# default (metrics on, no access log, no traces: "gateway-host") against the same gateway
# with everything on: metrics, the access log to a file, and traces sampled at 1% exported
# over OTLP/HTTP to a sink started here ("gateway-telemetry"), interleaved.
#   cargo build --release -p egress-gateway && bash benches/scripts/telemetry-bench.sh
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
peer=${PEER_BENCH:-$here/../shared/bench/peer-bench.sh}
gw=${GATEWAY_BIN:-$here/target/release/egress-gateway}
work=$(mktemp -d)
sink_port=${SINK_PORT:-38190}
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

export SUT_NAME=gateway-telemetry SUT_PORT=${SUT_PORT:-38180} SUT_HOST='{name}:{port}'
export SUT_CMD="exec $gw --config \$BENCH_TMP/../gateway-config \
  --listen 127.0.0.1:\$BENCH_SUT_PORT --admin 127.0.0.1:0 \
  --resolve origin.test:\$BENCH_ORIGIN_PORT:127.0.0.1 \
  --access-log-file $work/access.log \
  --otlp-endpoint http://127.0.0.1:$sink_port --trace-sampling 1"
GATEWAY_BIN=$gw GATEWAY_MODES=host TARGETS=${TARGETS:-"origin nginx"} PACED_RPS=${PACED_RPS:-0} \
  bash "$peer"
echo "access log lines: $(wc -l <"$work/access.log")"
