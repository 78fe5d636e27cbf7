#!/usr/bin/env bash
# Demo: brine minions (and one real salt-minion) answering a real `salt '*' test.ping`.
#   scripts/demo.sh [SALT_VERSION] [BRINE_MINIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
version="${1:-3007.17}"
scripts/salt-peer.sh "$version" >&2
cargo run -q --locked -p brine-e2e --example ping_demo -- "$version" "${2:-3}"
