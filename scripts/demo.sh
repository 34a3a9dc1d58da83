#!/usr/bin/env bash
# The main job on embedded defaults. Until the sidecar exists this prints the wire contract
# our binaries are built against.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run -q -p e2e --bin contract
