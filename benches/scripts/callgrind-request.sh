#!/usr/bin/env bash
# Instructions per request of a gateway binary, counted by callgrind (repeatable on a noisy
# machine): the full policy stack of callgrind.yaml (VirtualService header match and header
# set, DENY on paths and a header, ALLOW on a header), absolute-form keep-alive requests on
# one connection to a loopback origin. Runs 200 and 2200 requests; per request is the
# difference / 2000, so start-up and shutdown cancel out.
#   bash benches/scripts/callgrind-request.sh target/release/egress-gateway
# CONFIG=FILE measures another configuration (the origin is origin.test:18090).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="$1"
config="${CONFIG:-$here/callgrind.yaml}"
python3 "$here/callgrind_client.py" 0 0 origin & origin=$!
trap 'kill $origin 2>/dev/null' EXIT
sleep 0.5
declare -A total
for n in 200 2200; do
  out="$(mktemp)"
  valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" --config "$config" \
    --listen 127.0.0.1:18101 --admin 127.0.0.1:18100 --resolve origin.test:18090:127.0.0.1 \
    --threads 1 >/dev/null 2>&1 & pid=$!
  for _ in $(seq 1 100); do curl -s -o /dev/null http://127.0.0.1:18100/healthz/ready && break; sleep 0.2; done
  python3 "$here/callgrind_client.py" "$n" 18101 client >/dev/null
  kill -INT $pid; wait $pid || true
  total[$n]=$(grep -E '^summary' "$out" | awk '{print $2}')
  rm -f "$out"
done
echo "instructions per request: $(( (${total[2200]} - ${total[200]}) / 2000 ))"
