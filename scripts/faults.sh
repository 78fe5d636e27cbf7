#!/usr/bin/env bash
# The fault suite (tests/e2e/faults): two mofm sharing a Redis job cache through a Sentinel,
# three brine syndics, simulated minions, a steady `brine '*' test.ping` load; one fault at a
# time (kill -9, SIGSTOP, Sentinel failover) on a MoM, a syndic and Redis. Prints the table of
# lost / twice-recorded returns, CLI-incomplete jobs and recovery times, and writes it into
# docs/reliability.md. BRINE_FAULTS_ONLY=<text> runs only the faults whose name contains it.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=""
{ [ -x /usr/bin/redis-server ] && [ -x /usr/bin/redis-cli ]; } || missing="$missing redis-server"
[ -x /usr/bin/redis-sentinel ] || missing="$missing redis-sentinel"
if [ -n "$missing" ]; then
  apt-get update -qq && apt-get install -y -qq $missing
fi
cargo build -q --locked --bins
BRINE_FAULTS_DOC=1 cargo test -q --locked -p brine-e2e --test faults -- --nocapture
