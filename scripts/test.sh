#!/usr/bin/env bash
# Run every test: unit, property, captured-vector and live interop tests against real Salt
# 3006.30, 3007.17 and 3008.5 (installed first, into ~/.cache/brine/salt-peers, if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/salt-peer.sh all
# The partition test runs a master in a network namespace of its own (iproute2, as root).
if ! { [ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || command -v ip >/dev/null 2>&1; }; then
  apt-get update -qq && apt-get install -y -qq iproute2
fi
# The Redis job cache's tests run Debian's redis-server (and redis-sentinel) on loopback ports
# of their own.
# The API tier's test runs Debian's nginx in front of two mofm. SaltGUI's test drives Debian's
# headless Chromium (python3 talks to it over the DevTools pipe).
missing=""
{ [ -x /usr/bin/redis-server ] && [ -x /usr/bin/redis-cli ]; } || missing="$missing redis-server"
[ -x /usr/bin/redis-sentinel ] || missing="$missing redis-sentinel"
[ -x /usr/sbin/nginx ] || missing="$missing nginx-light"
[ -x /usr/bin/chromium ] || missing="$missing chromium"
command -v python3 >/dev/null 2>&1 || missing="$missing python3"
if [ -n "$missing" ]; then
  apt-get update -qq && apt-get install -y -qq $missing
fi
cargo test --workspace --locked "$@"
