#!/usr/bin/env bash
# Authorization cost under load, through ../shared/bench/peer-bench.sh: the gateway with no
# policy ("gateway-host") against the same gateway with 100 AuthorizationPolicies of 10 rules
# each (DENY on other hosts, one ALLOW for the bench origin from loopback with GET), a
# RequestAuthentication (inline keys; wrk sends no token, so this measures the token search
# and the stripping of forgeable output headers) and path normalisation (the default,
# DECODE_AND_MERGE_SLASHES), interleaved.
#   cargo build --release -p egress-gateway && bash benches/scripts/authz-bench.sh
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
peer=${PEER_BENCH:-$here/../shared/bench/peer-bench.sh}
gw=${GATEWAY_BIN:-$here/target/release/egress-gateway}

policies=$(mktemp -d)
trap 'rm -rf "$policies"' EXIT
{
  for p in $(seq 0 99); do
    printf -- '---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-%s, namespace: istio-system}\nspec:\n  action: DENY\n  rules:\n' "$p"
    for r in $(seq 0 9); do
      printf -- '  - to: [{operation: {hosts: ["svc%s-%s.example.com", "*.p%s.example.com"], paths: ["/admin/*"]}}]\n' "$p" "$r" "$p"
    done
  done
  cat <<'YAML'
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-origin, namespace: istio-system}
spec:
  action: ALLOW
  rules:
  - from: [{source: {ipBlocks: ["127.0.0.0/8"]}}]
    to: [{operation: {hosts: ["origin.test", "origin.test:*"], methods: ["GET"]}}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: istio-system}
spec:
  jwtRules:
  - issuer: https://issuer.test
    outputClaimToHeaders: [{header: x-jwt-sub, claim: sub}]
    jwks: '{"keys":[{"kty":"EC","crv":"P-256","kid":"k","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}'
YAML
} > "$policies/authz.yaml"
"$gw" check --config "$policies/authz.yaml" >/dev/null

export SUT_NAME=gateway-authz SUT_PORT=${SUT_PORT:-38170} SUT_HOST='{name}:{port}'
export SUT_CMD="exec $gw --config \$BENCH_TMP/../gateway-config --config $policies/authz.yaml \
  --listen 127.0.0.1:\$BENCH_SUT_PORT --admin 127.0.0.1:0 \
  --resolve origin.test:\$BENCH_ORIGIN_PORT:127.0.0.1"
GATEWAY_BIN=$gw GATEWAY_MODES=host TARGETS=${TARGETS:-"origin nginx"} PACED_RPS=${PACED_RPS:-0} \
  bash "$peer"
