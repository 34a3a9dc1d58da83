#!/usr/bin/env bash
# Writes daprd/pgo.profdata: how often each branch of daprd's code (its dependencies included)
# is taken on the bench's traffic, for profile-guided optimisation of the images' build.
#
# Why: LLVM lays out and inlines by guesses where it has no profile; with one, the request path's
# branches fall through, its calls are inlined and the code it never runs moves out of the way
# (bench/notes.md, "profile-guided optimisation").
#
# How: the three binaries built as the images build them but instrumented
# (-Cprofile-generate, in target/pgo-generate), then bench/per-request.sh's daprd chain run with
# them over N requests of its HTTP API and N of its gRPC API (metrics on, as the bench's
# sidecars), and the sidecars' counts merged by llvm-profdata (--sparse: functions that never
# ran are left out); sentry's are not kept. A profile a later build no longer matches is
# ignored function by function, so a stale file only optimises less; regenerate it when the
# data path, the toolchain or a dependency changes:
#
#   cargo build --locked -p e2e --bins
#   TOOLS=target/debug bash bench/pgo.sh [N]   (N: 2000)
#
# TOOLS names the directory with echo-app and bench (debug builds do). Needs llvm-profdata that
# reads rustc's raw profiles (LLVM 19 or later: Debian's llvm-19 reads rustc 1.95's), and what
# bench/per-request.sh needs. The images' build reads the file (Dockerfile).
set -euo pipefail
repo=$(realpath "$(dirname "$0")/..")
n=${1:-2000}
tools=$(realpath "${TOOLS:-$repo/target/debug}")
profdata=${LLVM_PROFDATA:-$(command -v llvm-profdata-19 || command -v llvm-profdata || true)}
[ -n "$profdata" ] || { echo "pgo.sh: llvm-profdata is missing (Debian: apt-get install llvm-19)" >&2; exit 1; }
for tool in echo-app bench; do
  [ -x "$tools/$tool" ] || { echo "pgo.sh: $tools/$tool is missing (cargo build --locked -p e2e --bins)" >&2; exit 1; }
done
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
target=$repo/target/pgo-generate
# The images' build, instrumented (a build with --target or with other packages gives the crates
# other symbol names, which the profile would not match). Build scripts and proc macros are
# instrumented too and write counts as they run; only the sidecars' are merged.
PGO_GENERATE="$d/raw" CARGO_TARGET_DIR=$target bash "$repo/scripts/build-release.sh"
mkdir -p "$d/bin"
cp "$target/release/daprd" "$target/release/sentry" "$tools/echo-app" "$tools/bench" "$d/bin/"
for api in http grpc; do
  # each instrumented process writes its counts when it exits
  LLVM_PROFILE_FILE="$d/raw/%p.profraw" PER_REQUEST_API=$api PER_REQUEST_PACE_MS=0 PER_REQUEST_METRICS=1 \
    bash "$repo/bench/per-request.sh" "$d/bin" "$n"
done
sidecars=()
for raw in "$d"/raw/*.profraw; do
  # a raw profile does not name its binary, but its local functions carry their crate's name
  if "$profdata" show --all-functions "$raw" | awk '/^  daprd\./ {f = 1} END {exit !f}'; then sidecars+=("$raw"); fi
done
[ ${#sidecars[@]} -gt 0 ] || { echo "pgo.sh: no sidecar wrote a profile" >&2; exit 1; }
"$profdata" merge --sparse -o "$repo/daprd/pgo.profdata" "${sidecars[@]}"
echo "pgo.sh: ${#sidecars[@]} sidecars' profiles -> $repo/daprd/pgo.profdata"
