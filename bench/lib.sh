# Helpers that bench/per-request.sh and bench/symbol-order.sh source.

# port: a free TCP port on 127.0.0.1.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_http URL [CURL_ARGS...]: until URL answers 2xx, at most 600 tries (~60 s and more).
wait_http() {
  local url=$1; shift
  for _ in $(seq 600); do curl -sf --max-time 2 -o /dev/null "$@" "$url" && return 0; sleep 0.1; done
  echo "$(basename "$0"): no answer from $url" >&2; exit 1
}
