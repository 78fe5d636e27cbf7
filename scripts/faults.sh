#!/usr/bin/env bash
# The fault suite (tests/e2e/faults): two mofm sharing a Redis job cache through a Sentinel,
# three brine syndics, each daemon in a network namespace of its own on a test bridge,
# simulated minions and real salt-minions, a steady `brine '*' test.ping` load (each MoM, and
# through nginx in front of both); one fault at a time (kill -9,
# SIGSTOP, partition, Sentinel failover, no Redis at all) on a MoM, a syndic and Redis. Prints
# the table of lost / twice-recorded returns, CLI-incomplete jobs and recovery times, and writes
# it into docs/reliability.md. Needs root (ip netns). BRINE_FAULTS_ONLY=<text> runs only the
# faults whose name contains it; BRINE_FAULTS_MINIONS=N simulates N minions (300);
# BRINE_FAULTS_REAL=N runs N real salt-minions 3007 (3 here, 0 in the README's test command); BRINE_FAULTS_KEEP=1 keeps the logs.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=""
{ [ -x /usr/bin/redis-server ] && [ -x /usr/bin/redis-cli ]; } || missing="$missing redis-server"
[ -x /usr/bin/redis-sentinel ] || missing="$missing redis-sentinel"
{ [ -x /usr/sbin/nginx ] || [ -x /usr/bin/nginx ]; } || missing="$missing nginx-light"
if [ -n "$missing" ]; then
  apt-get update -qq && apt-get install -y -qq $missing
fi
scripts/salt-peer.sh 3007.17 >/dev/null
cargo build -q --locked --bins
BRINE_FAULTS_REAL="${BRINE_FAULTS_REAL:-3}" BRINE_FAULTS_DOC=1 cargo test -q --locked -p brine-e2e --test faults -- --nocapture
