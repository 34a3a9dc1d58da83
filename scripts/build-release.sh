#!/usr/bin/env bash
# The release build of daprd, sentry and injector as the images make it (Dockerfile), and as
# the benchmarks measure it (docs/testing.md). Arguments go to cargo (e.g. --target-dir).
#
# - The package set: a build with other packages (--workspace) gives daprd's dependencies other
#   features, hence other symbol names, and daprd/symbol-order.txt then places few of them.
# - daprd/pgo.profdata (bench/pgo.sh): profile-guided optimisation from the bench's traffic.
#   Functions the profile no longer matches (code changed since it was made) are optimised
#   without it; LLVM's warning for each is turned off.
#
# PGO_GENERATE=DIR builds the same binaries instrumented instead, writing their counts into DIR
# as they run (bench/pgo.sh): the profile only matches a build of the same packages.
set -euo pipefail
repo=$(realpath "$(dirname "$0")/..")
profile=$repo/daprd/pgo.profdata
if [ -n "${PGO_GENERATE:-}" ]; then
  pgo="-Cprofile-generate=$PGO_GENERATE"
else
  [ -f "$profile" ] || { echo "build-release.sh: $profile is missing (bench/pgo.sh writes it)" >&2; exit 1; }
  pgo="-Cprofile-use=$profile -Cllvm-args=-no-pgo-warn-mismatch"
fi
export RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }$pgo"
exec cargo build --release --locked -p daprd -p sentry -p injector --bins "$@"
