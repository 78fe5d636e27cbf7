#!/usr/bin/env bash
# Run every test: unit, property, captured-vector and live interop tests against real Salt
# 3006.30, 3007.17 and 3008.5 (installed first, into ~/.cache/brine/salt-peers, if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/salt-peer.sh all
cargo test --workspace --locked "$@"
