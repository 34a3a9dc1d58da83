#!/usr/bin/env bash
# Writes daprd/symbol-order.txt: the functions a sidecar runs, in the order the linker should
# place them (daprd/build.rs hands the file to lld's --symbol-ordering-file for release builds).
#
# Why: most of an idle sidecar's RSS is pages of its own binary that start-up touched, and the
# kernel maps up to 64 KiB around each faulting page (bench/notes.md, "what idle RSS is made
# of"). Left to the linker, the few thousand functions that run are spread over 10 MB of text
# among the ones that never do. Placed together, start-up first and the request path after it,
# they fill few pages.
#
# How: three daprd (mTLS from a sentry, sqlite resolver): a caller and two callees, one with an
# HTTP app and one with a gRPC app, run under valgrind's callgrind. A dump once all are ready
# names the start-up functions; a dump after N rounds of invocations through the caller's HTTP
# API (and every 20th round its gRPC API and the gRPC proxy) names the request path. Function names are the mangled symbol
# names, as the linker knows them. Functions that a later build no longer has are skipped by lld,
# so a stale file only places less; regenerate it when the data path or start-up changes:
#
#   bash scripts/build-release.sh   (as the images: a --workspace build gives daprd's
#     dependencies other features, hence other symbol names; and with daprd/pgo.profdata,
#     which changes what is inlined, so regenerate this file after bench/pgo.sh)
#   cargo build --locked -p e2e --bins
#   TOOLS=target/debug bash bench/symbol-order.sh [BIN_DIR] [N]   (BIN_DIR: target/release, N: 200)
#
# TOOLS names another directory with echo-app and grpc-client (debug builds do as well).
#   bash bench/symbol-order.sh --check [BIN_DIR]   (exits 1 when a build places under 90% of it)
#
# Needs valgrind, callgrind_control, python3 and curl.
set -euo pipefail
repo=$(realpath "$(dirname "$0")/..")
out=$repo/daprd/symbol-order.txt
if [ "${1:-}" = --check ]; then
  # How much of the file a build placed: a file made stale by a toolchain or dependency update
  # (symbol names carry crate hashes) places little, and idle RSS shows it.
  binary=$(realpath "${2:-$repo/target/release}")/daprd
  python3 - "$out" "$binary" <<'PY'
import subprocess, sys
names = [line.strip() for line in open(sys.argv[1]) if line.strip()]
symbols = {line.split()[-1] for line in subprocess.run(
    ["nm", sys.argv[2]], capture_output=True, text=True, check=True).stdout.splitlines()}
found = sum(name in symbols for name in names)
print(f"symbol-order.sh: {found} of {len(names)} functions of daprd/symbol-order.txt are in {sys.argv[2]}")
sys.exit(0 if found >= 0.9 * len(names) else 1)
PY
  exit
fi
bin=$(realpath "${1:-$repo/target/release}")
n=${2:-200}
tools=$(realpath "${TOOLS:-$bin}")
for tool in valgrind callgrind_control python3 curl; do
  command -v "$tool" >/dev/null || { echo "symbol-order.sh: $tool is missing" >&2; exit 1; }
done
d=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$d"' EXIT
# shellcheck source=bench/lib.sh
source "$repo/bench/lib.sh"
app=$(port); grpc_app=$(port); sentry_port=$(port); healthz=$(port)
callee_http=$(port); callee_grpc_http=$(port); caller_http=$(port); caller_grpc=$(port)
"$tools/echo-app" --protocol http --port "$app" > "$d/app.log" 2>&1 &
"$tools/echo-app" --protocol grpc --port "$grpc_app" > "$d/grpc-app.log" 2>&1 &
mkdir -p "$d/creds"
"$bin/sentry" --issuer-credentials "$d/creds" --listen-address 127.0.0.1 --port "$sentry_port" \
  --healthz-listen-address 127.0.0.1 --healthz-port "$healthz" --enable-metrics=false \
  > "$d/sentry.log" 2>&1 &
wait_http "http://127.0.0.1:$healthz/healthz"
printf 'apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata: {name: order}\nspec:\n  nameResolution:\n    component: sqlite\n    configuration: {connectionString: %s}\n' "$d/nr.db" > "$d/config.yaml"
grind=(valgrind --tool=callgrind --demangle=no --compress-strings=no --compress-pos=no --dump-instr=no)
common=(--enable-mtls --sentry-address "127.0.0.1:$sentry_port" --control-plane-trust-domain localhost
  --dapr-listen-addresses 127.0.0.1 --config "$d/config.yaml")
# sidecar NAME HTTP_PORT GRPC_PORT ARGS...: one daprd under callgrind, its pid in $pids.
pids=()
sidecar() {
  local name=$1 http=$2 grpc=$3; shift 3
  DAPR_TRUST_ANCHORS_FILE="$d/creds/ca.crt" "${grind[@]}" --callgrind-out-file="$d/$name.out" \
    "$bin/daprd" --app-id "$name" --dapr-http-port "$http" --dapr-grpc-port "$grpc" \
    --dapr-internal-grpc-port "$(port)" --metrics-port "$(port)" "${common[@]}" "$@" \
    > "$d/$name.log" 2>&1 &
  pids+=($!)
}
sidecar orders "$callee_http" "$(port)" --app-port "$app"
sidecar orders-grpc "$callee_grpc_http" "$(port)" --app-port "$grpc_app" --app-protocol grpc
sidecar checkout "$caller_http" "$caller_grpc"
for p in "$callee_http" "$callee_grpc_http" "$caller_http"; do wait_http "http://127.0.0.1:$p/v1.0/healthz"; done
for pid in "${pids[@]}"; do callgrind_control -d "$pid" > /dev/null; done
head -c 1024 /dev/urandom > "$d/body"
invoke() { curl -sf --max-time 10 -o /dev/null "$@"; }
for i in $(seq "$n"); do
  for id in orders orders-grpc; do
    invoke -X POST --data-binary "@$d/body" "http://127.0.0.1:$caller_http/v1.0/invoke/$id/method/echo"
    invoke "http://127.0.0.1:$caller_http/v1.0/invoke/$id/method/echo?x=1"
  done
  if [ $((i % 20)) = 1 ]; then
    for id in orders orders-grpc; do
      "$tools/grpc-client" --addr "127.0.0.1:$caller_grpc" invoke --id "$id" --method echo --data x > /dev/null
    done
    "$tools/grpc-client" --addr "127.0.0.1:$caller_grpc" echo --app-id orders-grpc > /dev/null
  fi
done
invoke "http://127.0.0.1:$caller_http/v1.0/metadata"
kill -TERM "${pids[@]}"
wait "${pids[@]}" || true
# The dumps: <name>.out.1 is start-up (callgrind_control -d), <name>.out the rest of the run.
python3 - "$out" "$d"/*.out.1 -- "$d"/*.out <<'PY'
import sys
out, files = sys.argv[1], sys.argv[2:]
cut = files.index("--")
def functions(path):
    """Names of the functions of daprd's own object that ran, in first-seen order."""
    names, ob = [], ""
    for line in open(path, errors="replace"):
        if line.startswith("ob="):
            ob = line[3:].strip()
        elif line.startswith("fn=") and ob.endswith("/daprd"):
            names.append(line[3:].strip())
    return names
seen, ordered = set(), []
for group in (files[:cut], files[cut + 1:]):
    for path in group:
        for name in functions(path):
            if name not in seen:
                seen.add(name)
                ordered.append(name)
start = len({n for p in files[:cut] for n in functions(p)})
with open(out, "w") as f:
    f.write("\n".join(ordered) + "\n")
print(f"symbol-order.sh: {len(ordered)} functions ({start} at start-up) -> {out}")
PY
