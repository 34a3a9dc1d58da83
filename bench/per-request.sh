#!/usr/bin/env bash
# Per-request costs of a two-hop chain that do not depend on how busy the machine is, over N
# POSTs of 1 KiB (4 keep-alive connections, Python's http.client) through
#   daprd (default): client → caller daprd (HTTP API) → mTLS → callee daprd → echo-app,
#                    sqlite resolver;
#   nginx:           client → nginx A → TLS 1.3, client certificates (ECDSA P-256) → nginx B →
#                    echo-app, the HTTP chain of bench/src/nginx.rs (HTTP/1.1 keep-alive
#                    upstreams), each nginx one process (`master_process off`);
# for the first hop ("caller": caller daprd or nginx A) and the second ("callee": callee daprd or
# nginx B):
#   - user-space instructions (valgrind callgrind, zeroed after a warm-up) and the calls to
#     malloc/free/realloc/calloc among them (bench/callgrind-crates.py splits a kept profile by
#     crate);
#   - syscalls, all kinds (strace -f -c, attached after the warm-up; it slows every syscall, so
#     more requests may wait per wake-up) and, when perf is there, counted by kernel tracepoints
#     (perf stat: the total, the common kinds, reads that found nothing), which stop nothing;
#   - context switches (voluntary, involuntary) and on-CPU time, summed over the threads'
#     /proc/<pid>/task/*/{status,schedstat} with no tracer attached (perf's counters excepted);
#     CPU time depends on the machine, the rest does not;
# with the requests back-to-back and, unless PER_REQUEST_PACE_MS=0, paced (one request every
# PER_REQUEST_PACE_MS ms, default 1, across the 4 connections), which changes how many requests
# each wake-up finds.
#
#   bash bench/per-request.sh [BIN_DIR] [N]     (BIN_DIR defaults to target/release, N to 2000)
#   PER_REQUEST_CHAIN=nginx bash bench/per-request.sh [BIN_DIR] [N]   (echo-app from BIN_DIR)
#
# PER_REQUEST_CHAIN=nginx-h2 is nginx's HTTP chain with HTTP/2 between the hops, as between two
# sidecars: nginx A passes the HTTP/1.1 requests on with `grpc_pass` (any request as an HTTP/2
# stream) over the same TLS to nginx B's HTTP/2 server, which passes them to the app over
# HTTP/1.1 (bench/src/nginx.rs's `a_h2`/`b_h2`).
#
# PER_REQUEST_CHAIN=floor measures the floor of our chains instead: `BIN_DIR/floor-relay`
# (bench/src/floor.rs), the same two hops built from daprd's libraries (hyper's HTTP/1 server,
# h2 over rustls with client certificates, hyper's HTTP/2 server, hyper's HTTP/1 client to the
# app) and nothing of Dapr's, with nginx's certificates. With PER_REQUEST_API=grpc it passes
# `AppCallback/OnInvoke` calls on unchanged, as nginx's gRPC chain does (h2c in, h2 over TLS,
# h2c to the app).
#
# With PER_REQUEST_API=grpc the chains carry gRPC instead: `Dapr/InvokeService` to the caller
# daprd's gRPC API → mTLS → callee daprd → `AppCallback/OnInvoke` to echo-app (`--app-protocol
# grpc`); for nginx, `AppCallback/OnInvoke` through nginx A (h2c in) → `grpc_pass` over TLS 1.3
# with client certificates → nginx B → `grpc_pass` to echo-app, bench/src/nginx.rs's gRPC chain.
# Every hop of both then speaks HTTP/2. The calls come from `BIN_DIR/bench --calls` (Rust, tonic,
# 4 connections) instead of Python's http.client.
#
# With PER_REQUEST_KEEP=DIR the callgrind profiles are kept there (callgrind_annotate reads them);
# with PER_REQUEST_INSTR=1 they have each instruction's cost (--dump-instr=yes), from which
# bench/callgrind-crates.py also counts the code a request runs.
# With PER_REQUEST_PROFILE=DIR the two processes are also sampled by perf (cpu-clock, 4999 Hz,
# call graphs; linux-perf needed) under the same load, unperturbed by the other instruments, into
# DIR/<name>.<regime>.data, and each one's time is split by where it ran (the kernel, the
# program, each library); PER_REQUEST_PROFILE_ONLY=1 stops there. One sample is 200 us of CPU,
# so a DSO's samples × 200 us / N is its CPU time per request (bench/notes.md).
# With PER_REQUEST_RESOURCES=DIR the caller daprd loads that --resources-path (e.g. a Resiliency
# with a timeout and a retry policy for `orders`, to measure what applying policies costs).
# The sidecars run with `--enable-metrics=false` unless PER_REQUEST_METRICS=1, which leaves
# metrics on (each on a port of its own), as the full bench and upstream's defaults run them.
# nginx is $NGINX, else the one on PATH or in /usr/sbin, else Debian's package (the one the
# bench installs) unpacked into .cache/nginx with `apt-get download` + `dpkg -x` (no root).
# Needs valgrind, strace and openssl (Debian); perf (linux-perf) is optional. Not a test and not part of the bench command: it is how
# changes to the data path are compared on a shared 2-core machine (bench/notes.md).
set -euo pipefail
repo=$(realpath "$(dirname "$0")/..")
bin=$(realpath "${1:-$repo/target/release}")
n=${2:-2000}
chain=${PER_REQUEST_CHAIN:-daprd}
pace_ms=${PER_REQUEST_PACE_MS:-1}
api=${PER_REQUEST_API:-http}
case $chain in daprd | nginx | nginx-h2 | floor) ;; *) echo "per-request.sh: PER_REQUEST_CHAIN is daprd, nginx, nginx-h2 or floor" >&2; exit 1 ;; esac
[ "$chain" != nginx-h2 ] || [ "$api" = http ] || { echo "per-request.sh: PER_REQUEST_CHAIN=nginx-h2 is an HTTP chain" >&2; exit 1; }
[ "$chain" != floor ] || [ -x "$bin/floor-relay" ] || { echo "per-request.sh: PER_REQUEST_CHAIN=floor needs $bin/floor-relay" >&2; exit 1; }
case $api in http | grpc) ;; *) echo "per-request.sh: PER_REQUEST_API is http or grpc" >&2; exit 1 ;; esac
[ "$api" = http ] || [ -x "$bin/bench" ] || { echo "per-request.sh: PER_REQUEST_API=grpc needs $bin/bench" >&2; exit 1; }
for tool in valgrind callgrind_control strace python3 curl openssl; do
  command -v "$tool" >/dev/null || { echo "per-request.sh: $tool is missing" >&2; exit 1; }
done
d=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$d"' EXIT
# shellcheck source=bench/lib.sh
source "$repo/bench/lib.sh"
app=$(port)
"$bin/echo-app" --protocol "$api" --port "$app" > "$d/app.log" 2>&1 &
# wait_port PORT: until something accepts on 127.0.0.1:PORT (a gRPC server has no /healthz here)
wait_port() {
  for _ in $(seq 600); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "per-request.sh: nothing listens on 127.0.0.1:$1" >&2; exit 1
}

# certificates: as bench/src/nginx.rs writes them, into $d: a CA, the second hop's serving
# certificate (localhost, 127.0.0.1) and the first hop's client certificate, all ECDSA P-256.
certificates() {
  key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$d/$1.key" 2>/dev/null; }
  key ca
  openssl req -x509 -new -key "$d/ca.key" -subj "/CN=bench CA" -days 2 -out "$d/ca.crt" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
  for pair in server:DNS:localhost,IP:127.0.0.1 client:DNS:nginx-a; do
    name=${pair%%:*}
    key "$name"
    openssl req -new -key "$d/$name.key" -subj "/CN=$name" -out "$d/$name.csr"
    printf 'subjectAltName=%s\n' "${pair#*:}" > "$d/$name.ext"
    openssl x509 -req -in "$d/$name.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
      -days 2 -extfile "$d/$name.ext" -out "$d/$name.crt" 2>/dev/null
  done
}

if [ "$chain" = daprd ]; then
  sentry_port=$(port); healthz=$(port); callee_http=$(port); caller_http=$(port); caller_grpc=$(port)
  entry_port=$caller_http; entry_path=/v1.0/invoke/orders/method/echo; entry_grpc=dapr=127.0.0.1:$caller_grpc
  mkdir -p "$d/creds"
  printf 'apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata: {name: daprsystem}\nspec: {mtls: {enabled: true, workloadCertTTL: 1h, allowedClockSkew: 1m}}\n' > "$d/sentry.yaml"
  "$bin/sentry" --issuer-credentials "$d/creds" --config "$d/sentry.yaml" --listen-address 127.0.0.1 \
    --port "$sentry_port" --healthz-listen-address 127.0.0.1 --healthz-port "$healthz" \
    --enable-metrics=false > "$d/sentry.log" 2>&1 &
  wait_http "http://127.0.0.1:$healthz/healthz"
  printf 'apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata: {name: bench}\nspec:\n  nameResolution:\n    component: sqlite\n    configuration: {connectionString: %s}\n' "$d/nr.db" > "$d/config.yaml"
  common=(--enable-mtls --sentry-address "127.0.0.1:$sentry_port" --control-plane-trust-domain localhost
    --dapr-listen-addresses 127.0.0.1 --config "$d/config.yaml")
  # metrics PORT: the metrics flags of one sidecar (split into words where they are used).
  metrics() {
    if [ "${PER_REQUEST_METRICS:-0}" = 1 ]; then echo "--metrics-port $1"; else echo "--enable-metrics=false"; fi
  }
  # start_pair PREFIX...: a callee and a caller daprd, each run under PREFIX (may be empty).
  start_pair() {
    # shellcheck disable=SC2046
    DAPR_TRUST_ANCHORS_FILE="$d/creds/ca.crt" "$@" "$bin/daprd" --app-id orders $(metrics "$(port)") --app-port "$app" \
      --app-protocol "$api" --dapr-http-port "$callee_http" --dapr-grpc-port "$(port)" --dapr-internal-grpc-port "$(port)" \
      "${common[@]}" > "$d/callee.log" 2>&1 &
    callee=$!
    # shellcheck disable=SC2046
    DAPR_TRUST_ANCHORS_FILE="$d/creds/ca.crt" "$@" "$bin/daprd" --app-id checkout $(metrics "$(port)") \
      --dapr-http-port "$caller_http" --dapr-grpc-port "$caller_grpc" --dapr-internal-grpc-port "$(port)" \
      "${common[@]}" ${PER_REQUEST_RESOURCES:+--resources-path "$PER_REQUEST_RESOURCES"} \
      > "$d/caller.log" 2>&1 &
    caller=$!
    wait_http "http://127.0.0.1:$callee_http/v1.0/healthz"
    wait_http "http://127.0.0.1:$caller_http/v1.0/healthz"
  }
  names=(caller callee)
elif [ "$chain" = floor ]; then
  certificates
  caller_http=$(port); callee_tls=$(port)
  entry_port=$caller_http; entry_path=/v1.0/invoke/orders/method/echo; entry_grpc=app=127.0.0.1:$caller_http
  floor=(); [ "$api" = http ] || floor=(--grpc)
  if [ "$api" = http ]; then wait_http "http://127.0.0.1:$app/healthz"; else wait_port "$app"; fi
  # start_pair PREFIX...: the callee and the caller relay, each run under PREFIX.
  start_pair() {
    "$@" "$bin/floor-relay" callee "${floor[@]}" --listen "127.0.0.1:$callee_tls" --app "127.0.0.1:$app" \
      --ca "$d/ca.crt" --cert "$d/server.crt" --key "$d/server.key" > "$d/callee.log" 2>&1 &
    callee=$!
    wait_port "$callee_tls"
    "$@" "$bin/floor-relay" caller "${floor[@]}" --listen "127.0.0.1:$caller_http" --peer "127.0.0.1:$callee_tls" \
      --ca "$d/ca.crt" --cert "$d/client.crt" --key "$d/client.key" > "$d/caller.log" 2>&1 &
    caller=$!
    wait_port "$caller_http"
  }
  names=(floor-caller floor-callee)
else
  nginx=${NGINX:-$(command -v nginx || true)}
  [ -n "$nginx" ] || [ ! -x /usr/sbin/nginx ] || nginx=/usr/sbin/nginx
  if [ -z "$nginx" ]; then
    nginx=$repo/.cache/nginx/root/usr/sbin/nginx
    if [ ! -x "$nginx" ]; then
      echo "per-request.sh: unpacking Debian's nginx into $repo/.cache/nginx" >&2
      mkdir -p "$repo/.cache/nginx"
      (cd "$repo/.cache/nginx" && timeout 300 apt-get download nginx && dpkg -x nginx_*.deb root)
    fi
  fi
  a_http=$(port); b_http=$(port); a_grpc=$(port); b_grpc=$(port)
  entry_port=$a_http; entry_path=/echo; entry_grpc=app=127.0.0.1:$a_grpc
  certificates
  # bench/src/nginx.rs's config_a / config_b (the servers of the other API carry no traffic),
  # one process each instead of a master and one worker.
  nginx_head() {
    printf 'master_process off;\ndaemon off;\npid %s/%s.pid;\nerror_log %s/%s-error.log warn;\nevents { worker_connections 4096; }\nhttp {\n  access_log off;\n' "$d" "$1" "$d" "$1"
    for t in client_body proxy fastcgi uwsgi scgi; do printf '  %s_temp_path %s/%s-%s;\n' "$t" "$d" "$1" "$t"; done
    printf '  keepalive_requests 1000000;\n  keepalive_timeout 300s;\n  client_body_buffer_size 64k;\n  proxy_buffering off;\n  proxy_request_buffering off;\n'
  }
  # TLS 1.3's suites in daprd's order (bench/src/nginx.rs, SUITES)
  suites=TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256
  # client_tls grpc|proxy: A's TLS 1.3 to B with its client certificate; server_tls: B's side
  client_tls() {
    for directive in "protocols TLSv1.3" "certificate $d/client.crt" "certificate_key $d/client.key" \
      "trusted_certificate $d/ca.crt" "verify on" "name localhost" "session_reuse on" \
      "conf_command Ciphersuites $suites"; do
      printf '      %s_ssl_%s;\n' "$1" "$directive"
    done
  }
  server_tls() {
    printf '    ssl_protocols TLSv1.3;\n    ssl_certificate %s/server.crt;\n    ssl_certificate_key %s/server.key;\n' "$d" "$d"
    printf '    ssl_client_certificate %s/ca.crt;\n    ssl_verify_client on;\n' "$d"
    printf '    ssl_conf_command Ciphersuites %s;\n' "$suites"
  }
  # nginx-h2: A passes the HTTP/1.1 requests on over HTTP/2 (`grpc_pass` sends any request as
  # an HTTP/2 stream) to B's HTTP/2 server, which passes them to the app over HTTP/1.1: the
  # HTTP chain's protocols with HTTP/2 between the hops, as between two sidecars
  a_http_location() {
    if [ "$chain" = nginx-h2 ]; then
      printf '      grpc_pass grpcs://b_grpc;\n'; client_tls grpc
    else
      printf '      proxy_pass https://b_http;\n      proxy_http_version 1.1;\n      proxy_set_header Connection "";\n'; client_tls proxy
    fi
  }
  b_h2_location() {
    if [ "$chain" = nginx-h2 ]; then
      printf '      proxy_pass http://app_http;\n      proxy_http_version 1.1;\n      proxy_set_header Connection "";\n'
    else
      printf '      grpc_pass grpc://app_grpc;\n'
    fi
  }
  { nginx_head nginx-a; cat <<EOF
  upstream b_http { server 127.0.0.1:$b_http; keepalive 64; keepalive_requests 1000000; }
  upstream b_grpc { server 127.0.0.1:$b_grpc; keepalive 64; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$a_grpc http2;
    location / {
      grpc_pass grpcs://b_grpc;
$(client_tls grpc)
    }
  }
  server {
    listen 127.0.0.1:$a_http;
    location / {
$(a_http_location)
    }
  }
}
EOF
  } > "$d/nginx-a.conf"
  { nginx_head nginx-b; cat <<EOF
  upstream app_http { server 127.0.0.1:$app; keepalive 64; keepalive_requests 1000000; }
  upstream app_grpc { server 127.0.0.1:$app; keepalive 64; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$b_grpc ssl http2;
$(server_tls)
    location / {
$(b_h2_location)
    }
  }
  server {
    listen 127.0.0.1:$b_http ssl;
$(server_tls)
    location / {
      proxy_pass http://app_http;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
  } > "$d/nginx-b.conf"
  "$nginx" -t -p "$d" -c "$d/nginx-a.conf" > "$d/nginx-t.log" 2>&1 && "$nginx" -t -p "$d" -c "$d/nginx-b.conf" >> "$d/nginx-t.log" 2>&1 \
    || { cat "$d/nginx-t.log" >&2; exit 1; }
  if [ "$api" = http ]; then wait_http "http://127.0.0.1:$app/healthz"; else wait_port "$app"; fi
  # start_pair PREFIX...: nginx B ("callee") and nginx A ("caller"), each run under PREFIX.
  start_pair() {
    "$@" "$nginx" -p "$d" -c "$d/nginx-b.conf" > "$d/callee.log" 2>&1 &
    callee=$!
    "$@" "$nginx" -p "$d" -c "$d/nginx-a.conf" > "$d/caller.log" 2>&1 &
    caller=$!
    if [ "$api" = grpc ]; then wait_port "$b_grpc"; wait_port "$a_grpc"; return; fi
    wait_http "https://127.0.0.1:$b_http/healthz" --cacert "$d/ca.crt" --cert "$d/client.crt" \
      --key "$d/client.key" --resolve "localhost:$b_http:127.0.0.1"
    wait_http "http://127.0.0.1:$a_http/healthz"
  }
  names=(nginx-a nginx-b)
fi
stop_pair() { kill "$caller" "$callee"; wait "$caller" "$callee" 2>/dev/null || true; }

# load N [PACE_MS]: N requests on 4 keep-alive connections (N/4 each), back-to-back or one every
# PACE_MS across the connections; exits non-zero on any non-200, gives up after 20 minutes.
load() {
  if [ "$api" = grpc ]; then
    timeout 1200 "$bin/bench" --calls "$1" --calls-to "$entry_grpc" --calls-pace-ms "${2:-0}"
    return
  fi
  timeout 1200 python3 - "$1" "${2:-0}" "$entry_port" "$entry_path" <<'PY'
import http.client, sys, threading, time
n, pace, port, path = int(sys.argv[1]), float(sys.argv[2]) / 1000, int(sys.argv[3]), sys.argv[4]
body, failed, start = b"x" * 1024, [], time.monotonic() + 0.05
def run(j):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for k in range(n // 4):
        if pace:
            delay = start + (4 * k + j) * pace - time.monotonic()
            if delay > 0: time.sleep(delay)
        c.request("POST", path, body, {"Content-Type": "application/octet-stream"})
        r = c.getresponse(); r.read()
        if r.status != 200: failed.append(r.status)
threads = [threading.Thread(target=run, args=(j,)) for j in range(4)]
[t.start() for t in threads]; [t.join() for t in threads]
sys.exit(f"{len(failed)} failed requests: {failed[:5]}" if failed else 0)
PY
}
# snap PID: voluntary and involuntary context switches and on-CPU ns, summed over its threads.
# (a thread that exits meanwhile is skipped)
snap() {
  { cat /proc/"$1"/task/*/status 2>/dev/null || true; } | awk '/^voluntary_ctxt/{v+=$2} /^nonvoluntary_ctxt/{i+=$2} END{printf "%d %d ", v, i}'
  { cat /proc/"$1"/task/*/schedstat 2>/dev/null || true; } | awk '{t+=$1} END{printf "%d\n", t}'
}
# the syscalls perf counts by kind (the rest are "other"; "-EAGAIN" are some of those counted
# already); strace lists every kind but slows each syscall down
perf_events=()
for sc in read readv recvfrom recvmsg write writev sendto sendmsg epoll_wait epoll_pwait epoll_ctl \
  futex getsockopt setsockopt ioctl accept4 close sched_yield madvise mmap munmap brk getrandom; do
  perf_events+=(-e "syscalls:sys_enter_$sc")
done
for sc in read recvfrom; do           # and the reads that found nothing (EAGAIN)
  perf_events+=(-e "syscalls:sys_exit_$sc" --filter 'ret == -11')
done
regimes=(burst); [ "$pace_ms" = 0 ] || regimes+=(paced)
pace_of() { [ "$1" = burst ] && echo 0 || echo "$pace_ms"; }

# 1. context switches and CPU time of the native processes, no tracer attached (perf stat's
#    tracepoint counter excepted: it counts in the kernel and stops nothing)
start_pair
load 400                                   # warm-up: connections, pools, caches, TLS sessions
for regime in "${regimes[@]}"; do
  perfs=()
  if command -v perf >/dev/null; then
    for who in caller callee; do
      timeout 1300 perf stat -x, -e raw_syscalls:sys_enter "${perf_events[@]}" -o "$d/perf.$regime.$who" -p "${!who}" &
      perfs+=($!)
    done
    sleep 1                                # perf attaches asynchronously
  fi
  for who in caller callee; do snap "${!who}" > "$d/snap0.$regime.$who"; done
  load "$n" "$(pace_of "$regime")"
  for who in caller callee; do snap "${!who}" > "$d/snap1.$regime.$who"; done
  [ ${#perfs[@]} = 0 ] || { kill -INT "${perfs[@]}"; wait "${perfs[@]}" 2>/dev/null || true; }
done
# 1b. with PER_REQUEST_PROFILE=DIR: where the on-CPU time goes, user space and kernel, sampled
#     by perf (cpu-clock, call graphs) into DIR/<name>.<regime>.data; with
#     PER_REQUEST_PROFILE_ONLY=1 the script stops after printing each one's split
if [ -n "${PER_REQUEST_PROFILE:-}" ]; then
  mkdir -p "$PER_REQUEST_PROFILE"
  for regime in "${regimes[@]}"; do
    recs=()
    for i in 0 1; do
      who=${names[$i]}; role=$([ "$i" = 0 ] && echo caller || echo callee)
      timeout 1300 perf record -q -e cpu-clock -F 4999 -g -p "${!role}" \
        -o "$PER_REQUEST_PROFILE/$who.$regime.data" > /dev/null 2>&1 &
      recs+=($!)
    done
    sleep 1                                # perf attaches asynchronously
    load "$n" "$(pace_of "$regime")"
    kill -INT "${recs[@]}"; wait "${recs[@]}" 2>/dev/null || true
  done
  for regime in "${regimes[@]}"; do
    for who in "${names[@]}"; do
      # CPU us per request in the kernel ([kernel.kallsyms]), in user space (the program and its
      # libraries) and in each of those: a sample is 1/4999 s of CPU
      printf '%-7s %-5s CPU us/request: %s\n' "$who" "$regime" "$(perf report -q -n -g none -i "$PER_REQUEST_PROFILE/$who.$regime.data" \
        --no-children --sort dso --stdio 2>/dev/null | awk -v n="$n" 'NF >= 3 && $1 ~ /%$/ {us = $2 * 1e6 / 4999 / n; t += us
          if ($3 == "[kernel.kallsyms]") k = us; else line = line sprintf("%s %.1f  ", $3, us)}
          END {printf "total %.1f  kernel %.1f  user %.1f (%s)", t, k, t - k, line}')"
    done
  done
  [ -z "${PER_REQUEST_PROFILE_ONLY:-}" ] || exit 0
fi
# 2. syscalls by kind, strace attached (it slows each syscall down, so more requests may
#    be waiting per wake-up than in 1.)
for regime in "${regimes[@]}"; do
  for who in caller callee; do
    timeout 1300 strace -f -c -o "$d/strace.$regime.$who" -p "${!who}" 2>/dev/null &
    eval "strace_$who=\$!"
  done
  sleep 1                                  # strace attaches asynchronously
  load "$n" "$(pace_of "$regime")"
  kill -INT "$strace_caller" "$strace_callee"; wait "$strace_caller" "$strace_callee" 2>/dev/null || true
done
stop_pair
# 3. instructions, under callgrind, counted from after a warm-up
instr=()
[ "${PER_REQUEST_INSTR:-0}" != 1 ] || instr=(--dump-instr=yes)
start_pair valgrind --tool=callgrind "${instr[@]}" "--callgrind-out-file=$d/callgrind.%p"
load 400
callgrind_control -z "$caller" >/dev/null; callgrind_control -z "$callee" >/dev/null
load "$n"
callgrind_control -d "$caller" >/dev/null; callgrind_control -d "$callee" >/dev/null
if [ -n "${PER_REQUEST_KEEP:-}" ]; then
  mkdir -p "$PER_REQUEST_KEEP"
  cp "$(ls -t "$d"/callgrind."$caller"* | head -1)" "$PER_REQUEST_KEEP/${names[0]}.callgrind"
  cp "$(ls -t "$d"/callgrind."$callee"* | head -1)" "$PER_REQUEST_KEEP/${names[1]}.callgrind"
fi

# alloc_calls FILE: calls per request of the allocators' entry points, from callgrind's call
# counts (all callers: Rust's global allocator, OpenSSL's CRYPTO_malloc, nginx's pools): glibc's,
# plus mimalloc's as Rust's global allocator calls them (daprd's, `mimalloc` crate).
alloc_calls() {
  python3 - "$1" "$n" <<'PY'
import re, sys
names, counts, cfn = {}, {}, None
for line in open(sys.argv[1], errors="replace"):
    m = re.match(r"c?fn=\((\d+)\)(?: (.*))?", line)
    if m:
        if m.group(2): names[m.group(1)] = m.group(2).split("'")[0]
        if line.startswith("cfn="): cfn = names[m.group(1)]
    elif line.startswith("calls=") and cfn:
        counts[cfn] = counts.get(cfn, 0) + int(line[6:].split()[0])
n = int(sys.argv[2])
entries = {"malloc": ("malloc", "mi_malloc_aligned"), "calloc": ("calloc", "mi_zalloc_aligned"),
           "realloc": ("realloc", "mi_realloc_aligned"), "free": ("free", "mi_free")}
calls = {f: sum(counts.get(name, 0) for name in names) for f, names in entries.items()}
# glibc's free(NULL) returns before _int_free (OpenSSL frees NULL often): count both; Rust
# never frees NULL
print("  ".join(f"{f} {calls[f] / n:.2f}" for f in entries)
      + f" (not NULL: {(counts.get('_int_free', 0) + counts.get('mi_free', 0)) / n:.2f})")
PY
}
echo "chain $chain, API $api, $n requests of 1 KiB, 4 connections${regimes[1]:+; paced: one request every $pace_ms ms}"
roles=(caller callee)
for i in 0 1; do
  who=${roles[$i]}; pid=${!who}
  file=$(ls -t "$d"/callgrind."$pid"* | head -1)
  ir=$(awk '/^(summary|totals):/{print $2; exit}' "$file")
  calls=$(awk -v n="$n" '$NF ~ /^(writev|write|sendto|recvfrom|read|epoll_wait)$/ {printf "%s %.2f  ", $NF, $4 / n}' "$d/strace.burst.$who")
  printf '%-7s instructions/request %7d   syscalls/request: %s\n' "${names[$i]}" $((ir / n)) "$calls"
  printf '        allocator calls/request: %s\n' "$(alloc_calls "$file")"
  for regime in "${regimes[@]}"; do
    perf=""
    # perf stat -x,: "count,unit,event,..."; total first, then the kinds, then what is left
    [ ! -s "$d/perf.$regime.$who" ] || perf=$(awk -F, -v n="$n" '$3 == "raw_syscalls:sys_enter" {t = $1}
      $3 ~ /^syscalls:sys_exit_/ {sub("syscalls:sys_exit_", "", $3); print $1, $3 "-EAGAIN"; next}
      $3 ~ /^syscalls:/ && $1 > 0 {sub("syscalls:sys_enter_", "", $3); print $1, $3; s += $1}
      END {print t, "total"; print t - s, "other"}' "$d/perf.$regime.$who" | sort -k1,1nr \
      | awk -v n="$n" '$1 / n >= 0.005 {printf "%s %.2f  ", $2, $1 / n}')
    printf '        %-5s %s\n' "$regime" "$(awk -v n="$n" -v after="$d/snap1.$regime.$who" '{getline a < after; split(a, x)
      printf "context switches/request: voluntary %.2f involuntary %.2f   CPU us/request %.1f", (x[1] - $1) / n, (x[2] - $2) / n, (x[3] - $3) / n / 1000}' \
      "$d/snap0.$regime.$who")"
    [ -z "$perf" ] || printf '        %-5s syscalls/request (perf): %s\n' "$regime" "$perf"
    # strace -c: "% time, seconds, usecs/call, calls, [errors,] syscall", then a "total" row;
    # errors (in parentheses) are mostly EAGAIN: a read that found nothing
    printf '        %-5s syscalls/request (strace): %s\n' "$regime" "$(awk '$1 ~ /^[0-9.]+$/ {print $4, $NF, (NF == 6 ? $5 : 0)}' \
      "$d/strace.$regime.$who" | sort -k1,1nr \
      | awk -v n="$n" '$1 / n >= 0.005 {printf "%s %.2f", $2, $1 / n; if ($3 / n >= 0.005) printf " (%.2f)", $3 / n; printf "  "}')"
  done
done
