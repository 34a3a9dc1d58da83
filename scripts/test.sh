#!/usr/bin/env bash
# Runs every test tier that exists, after installing what the tests need into .cache/
# (idempotent: each install is skipped while its inputs are unchanged).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
cache="$root/.cache"
mkdir -p "$cache/upstream"

step() { printf '\n==> %s\n' "$*"; }

# stamp NAME INPUT...: true when the inputs changed since the last successful install of NAME.
changed() {
  local name=$1; shift
  local sum; sum=$(cat "$@" | sha256sum | cut -d' ' -f1)
  [ "$(cat "$cache/$name.stamp" 2>/dev/null)" != "$sum" ] && echo "$sum" > "$cache/$name.pending"
}
done_install() { mv "$cache/$1.pending" "$cache/$1.stamp"; }

step "Debian packages"
need=()
for pkg in dnsmasq iproute2 curl; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
echo "ok"

step "Python SDK (PyPI dapr) into .cache/venv"
if changed venv tests/compat/requirements.txt || [ ! -x "$cache/venv/bin/python" ]; then
  rm -rf "$cache/venv"
  python3 -m venv "$cache/venv"
  "$cache/venv/bin/pip" install -q --disable-pip-version-check -r tests/compat/requirements.txt
  done_install venv 2>/dev/null || true
fi
"$cache/venv/bin/python" tests/compat/dump_python_descriptors.py "$cache/upstream/python-sdk.fds"

step "kubernetes-validate (PyPI) into .cache/venv"
# The injector's golden and render tests validate the pods they produce with --strict.
if changed kubernetes-validate injector/tests/requirements.txt || [ ! -x "$cache/venv/bin/kubernetes-validate" ]; then
  "$cache/venv/bin/python" -m pip install -q --disable-pip-version-check -r injector/tests/requirements.txt
  done_install kubernetes-validate 2>/dev/null || true
fi
"$cache/venv/bin/python" -m kubernetes_validate --version

step "JS SDK (npm @dapr/dapr) into .cache/npm"
if changed npm tests/compat/package.json tests/compat/package-lock.json || [ ! -d "$cache/npm/node_modules/@dapr/dapr/proto" ]; then
  rm -rf "$cache/npm" && mkdir -p "$cache/npm"
  cp tests/compat/package.json tests/compat/package-lock.json "$cache/npm/"
  (cd "$cache/npm" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error)
  done_install npm 2>/dev/null || true
fi
echo "ok"

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo build --bins (the end-to-end tests run the real binaries)"
cargo build --workspace --bins --locked

step "cargo test (unit, crate integration, compatibility, end to end)"
cargo test --workspace --locked
