#!/usr/bin/env bash
# Per-request costs of the two-sidecar chain that do not depend on how busy the machine is:
# user-space instructions (valgrind callgrind) and write/read syscalls (strace), for the caller
# and the callee daprd, over N POSTs of 1 KiB through the HTTP API, mTLS on, sqlite resolver.
#
#   bash bench/per-request.sh [BIN_DIR] [N]     (BIN_DIR defaults to target/release, N to 2000)
#
# With PER_REQUEST_KEEP=DIR the callgrind profiles are kept there (callgrind_annotate reads them).
# With PER_REQUEST_RESOURCES=DIR the caller loads that --resources-path (e.g. a Resiliency with a
# timeout and a retry policy for `orders`, to measure what applying policies costs).
# Needs valgrind and strace (Debian). Not a test and not part of the bench command: it is how
# changes to the data path are compared on a shared 2-core machine (bench/notes.md).
set -euo pipefail
bin=$(realpath "${1:-$(dirname "$0")/../target/release}")
n=${2:-2000}
for tool in valgrind callgrind_control strace python3 curl; do
  command -v "$tool" >/dev/null || { echo "per-request.sh: $tool is missing" >&2; exit 1; }
done
d=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$d"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
sentry_port=$(port); healthz=$(port); app=$(port); callee_http=$(port); caller_http=$(port)
wait_http() { for _ in $(seq 600); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done; echo "no answer from $1" >&2; exit 1; }

mkdir -p "$d/creds"
printf 'apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata: {name: daprsystem}\nspec: {mtls: {enabled: true, workloadCertTTL: 1h, allowedClockSkew: 1m}}\n' > "$d/sentry.yaml"
"$bin/sentry" --issuer-credentials "$d/creds" --config "$d/sentry.yaml" --listen-address 127.0.0.1 \
  --port "$sentry_port" --healthz-listen-address 127.0.0.1 --healthz-port "$healthz" \
  --enable-metrics=false > "$d/sentry.log" 2>&1 &
wait_http "http://127.0.0.1:$healthz/healthz"
"$bin/echo-app" --protocol http --port "$app" > "$d/app.log" 2>&1 &
printf 'apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata: {name: bench}\nspec:\n  nameResolution:\n    component: sqlite\n    configuration: {connectionString: %s}\n' "$d/nr.db" > "$d/config.yaml"
common=(--enable-mtls --sentry-address "127.0.0.1:$sentry_port" --control-plane-trust-domain localhost
  --dapr-listen-addresses 127.0.0.1 --config "$d/config.yaml" --enable-metrics=false)
# start_pair PREFIX...: a callee and a caller daprd, each run under PREFIX (may be empty).
start_pair() {
  DAPR_TRUST_ANCHORS_FILE="$d/creds/ca.crt" "$@" "$bin/daprd" --app-id orders --app-port "$app" \
    --dapr-http-port "$callee_http" --dapr-grpc-port "$(port)" --dapr-internal-grpc-port "$(port)" \
    "${common[@]}" > "$d/callee.log" 2>&1 &
  callee=$!
  DAPR_TRUST_ANCHORS_FILE="$d/creds/ca.crt" "$@" "$bin/daprd" --app-id checkout \
    --dapr-http-port "$caller_http" --dapr-grpc-port "$(port)" --dapr-internal-grpc-port "$(port)" \
    "${common[@]}" ${PER_REQUEST_RESOURCES:+--resources-path "$PER_REQUEST_RESOURCES"} \
    > "$d/caller.log" 2>&1 &
  caller=$!
  wait_http "http://127.0.0.1:$callee_http/v1.0/healthz"
  wait_http "http://127.0.0.1:$caller_http/v1.0/healthz"
}
stop_pair() { kill "$caller" "$callee"; wait "$caller" "$callee" 2>/dev/null || true; }

# N requests on 4 keep-alive connections (N/4 each); exits non-zero on any non-200.
load() {
  python3 - "$1" "$caller_http" <<'PY'
import http.client, sys, threading
n, port = int(sys.argv[1]), int(sys.argv[2])
body, failed = b"x" * 1024, []
def run():
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for _ in range(n // 4):
        c.request("POST", "/v1.0/invoke/orders/method/echo", body, {"Content-Type": "application/octet-stream"})
        r = c.getresponse(); r.read()
        if r.status != 200: failed.append(r.status)
threads = [threading.Thread(target=run) for _ in range(4)]
[t.start() for t in threads]; [t.join() for t in threads]
sys.exit(f"{len(failed)} failed requests: {failed[:5]}" if failed else 0)
PY
}
traced=(writev write sendto recvfrom read epoll_wait)
# 1. syscalls of the native processes
start_pair
load 400                                   # warm-up: connections, pools, caches
for who in caller callee; do
  strace -f -c -e trace="$(IFS=,; echo "${traced[*]}")" -o "$d/strace.$who" -p "${!who}" 2>/dev/null &
  eval "strace_$who=\$!"
done
sleep 1                                    # strace attaches asynchronously
load "$n"
kill -INT "$strace_caller" "$strace_callee"; wait "$strace_caller" "$strace_callee" 2>/dev/null || true
stop_pair
# 2. instructions, under callgrind, counted from after a warm-up
start_pair valgrind --tool=callgrind "--callgrind-out-file=$d/callgrind.%p"
load 400
callgrind_control -z "$caller" >/dev/null; callgrind_control -z "$callee" >/dev/null
load "$n"
callgrind_control -d "$caller" >/dev/null; callgrind_control -d "$callee" >/dev/null
if [ -n "${PER_REQUEST_KEEP:-}" ]; then
  mkdir -p "$PER_REQUEST_KEEP"
  cp "$(ls -t "$d"/callgrind."$caller"* | head -1)" "$PER_REQUEST_KEEP/caller.callgrind"
  cp "$(ls -t "$d"/callgrind."$callee"* | head -1)" "$PER_REQUEST_KEEP/callee.callgrind"
fi
for who in caller callee; do
  pid=${!who}
  file=$(ls -t "$d"/callgrind."$pid"* | head -1)
  ir=$(awk '/^(summary|totals):/{print $2; exit}' "$file")
  calls=$(awk -v n="$n" '$NF ~ /^(writev|write|sendto|recvfrom|read|epoll_wait)$/ {printf "%s %.2f  ", $NF, $4 / n}' "$d/strace.$who")
  printf '%-6s  instructions/request %7d   syscalls/request: %s\n' "$who" $((ir / n)) "$calls"
done
