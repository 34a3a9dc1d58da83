#!/usr/bin/env bash
# The main job on embedded defaults: sentry and two apps, each with its own daprd, on this
# machine. sentry (standalone) generates a root and issuer; each daprd gets its SPIFFE
# certificate from it; checkout's daprd finds orders' daprd through the sqlite name resolver (a
# shared file) and calls it over the internal gRPC API with mutual TLS; orders' daprd calls its
# app. Prints every step.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q --bins -p daprd -p sentry -p e2e
bin=target/debug
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

cat > "$work/config.yaml" <<YAML
apiVersion: dapr.io/v1alpha1
kind: Configuration
metadata:
  name: demo
spec:
  nameResolution:
    component: sqlite
    configuration:
      connectionString: $work/names.db
YAML

echo "== starting sentry (standalone; CA generated into $work/creds)"
mkdir -p "$work/creds"
$bin/sentry --issuer-credentials "$work/creds" --listen-address 127.0.0.1 --port 50100 \
  --healthz-port 8180 --metrics-port 9190 > "$work/sentry.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' localhost:8180/healthz)" = 200 ] && break
  sleep 0.1
done
mtls=(--enable-mtls --sentry-address 127.0.0.1:50100 --control-plane-trust-domain localhost)
export DAPR_TRUST_ANCHORS_FILE="$work/creds/ca.crt"

echo "== starting the orders app (echo-app on 127.0.0.1:7100) and its daprd (HTTP 3601)"
$bin/echo-app --port 7100 > "$work/app.log" 2>&1 & pids+=($!)
$bin/daprd --app-id orders --app-port 7100 --dapr-http-port 3601 --dapr-grpc-port 50101 \
  --dapr-internal-grpc-port 50201 --metrics-port 9191 --config "$work/config.yaml" "${mtls[@]}" \
  > "$work/orders.log" 2>&1 & pids+=($!)
echo "== starting checkout's daprd (HTTP 3602), an app that only calls out"
$bin/daprd --app-id checkout --dapr-http-port 3602 --dapr-grpc-port 50102 \
  --dapr-internal-grpc-port 50202 --metrics-port 9192 --config "$work/config.yaml" "${mtls[@]}" \
  > "$work/checkout.log" 2>&1 & pids+=($!)

for port in 3601 3602; do
  for _ in $(seq 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "localhost:$port/v1.0/healthz")" = 204 ] && break
    sleep 0.1
  done
  echo "   daprd on :$port healthz: $(curl -s -o /dev/null -w '%{http_code}' "localhost:$port/v1.0/healthz")"
done

echo "== POST localhost:3602/v1.0/invoke/orders/method/inspect/neworder?id=42  (body: {\"item\":\"book\"})"
curl -sS -X POST -H 'content-type: application/json' --data '{"item":"book"}' \
  'localhost:3602/v1.0/invoke/orders/method/inspect/neworder?id=42'
echo
echo "== the same call in the dapr-app-id header form"
curl -sS -i -H 'dapr-app-id: orders' --data 'hello through two sidecars' localhost:3602/echo | sed -n '1p;/^x-echo/p;$p'
echo
echo "== orders' daprd start-up log"
sed 's/\x1b\[[0-9;]*m//g' "$work/orders.log" | grep -E 'mTLS|certificate|name resolution|listening|discovered|initialized' | cut -c29-
