#!/usr/bin/env bash
# Issue 17, item 7: a `'*' test.ping` fan-out with `master_job_cache: redis`, brine (mofm) and
# Salt (salt-master with its redis returner) in the same run, with Redis
#   up    redis-server on loopback,
#   slow  the same behind benches/delay_proxy.py (DELAY ms added to every chunk, each way),
#   down  a port with nothing listening.
# During each round benches/redis_sampler.py polls Redis (every 20 ms): returns per second
# reaching it (from the job's `load:<jid>` to its last `ret:<jid>` field) and the peak rate
# over 0.5 s. The fan-out's time is the CLI's (`brine`/`salt '*' test.ping -t 120`).
#
#   benches/redis_fanout.sh [--size 9000] [--rounds 3] [--delay 20] [--modes "up slow down"]
#                           [--kinds "brine salt"] [--salt 3007.17] [--no-docs] [--report]
#
# Writes target/redis-fanout/table.md and, unless --no-docs, the section between the
# `redis fanout` markers of docs/performance.md. --report rebuilds the table from the results
# already in target/redis-fanout. Needs redis-server and the Salt peer (scripts/salt-peer.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
size=9000
rounds=3
delay=20
modes="up slow down"
kinds="brine salt"
version=3007.17
docs=1
report=0
while [ $# -gt 0 ]; do
  case "$1" in
    --size) size="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --delay) delay="$2"; shift 2 ;;
    --modes) modes="$2"; shift 2 ;;
    --kinds) kinds="$2"; shift 2 ;;
    --salt) version="$2"; shift 2 ;;
    --no-docs) docs=0; shift ;;
    --report) report=1; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
out="$(pwd)/target/redis-fanout"
mkdir -p "$out"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

if [ "$report" = 0 ]; then
  command -v redis-server >/dev/null || { echo "redis-server missing: apt-get install redis-server" >&2; exit 2; }
  work="$(mktemp -d /tmp/brine-redis-fanout.XXXXXX)"
  rport=$(free_port)
  redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$work" --daemonize no > "$work/redis.log" 2>&1 &
  redis_pid=$!
  proxy_pid=""
  cleanup() {
    [ -n "$proxy_pid" ] && kill "$proxy_pid" 2>/dev/null || true
    kill "$redis_pid" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
  }
  trap cleanup EXIT
  for _ in $(seq 1 50); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
  # One release build for every run, copied aside (a build during the run must not change
  # what is measured); BRINE_BIN_DIR=DIR measures the binaries in DIR instead.
  if [ -z "${BRINE_BIN_DIR:-}" ]; then
    cargo build --release -q --locked --bins
    mkdir -p "$work/bin"
    for f in target/release/*; do
      if [ -f "$f" ] && [ -x "$f" ]; then cp "$f" "$work/bin/"; fi
    done
    export BRINE_BIN_DIR="$work/bin"
  fi
  for mode in $modes; do
    case "$mode" in
      up) port=$rport ;;
      slow)
        port=$(free_port)
        python3 benches/delay_proxy.py "$port" "$rport" "$delay" &
        proxy_pid=$!
        sleep 0.5 ;;
      down) port=$(free_port) ;;
      *) echo "unknown mode $mode" >&2; exit 2 ;;
    esac
    redis-cli -p "$rport" flushall >/dev/null
    echo "== Redis $mode: $kinds, $size minions" >&2
    mkdir -p "$out/$mode"
    SCENARIO_OUT="$out/$mode" \
    SCENARIO_REDIS_SAMPLE="127.0.0.1 $rport" \
    SCENARIO_MASTER_CONF="master_job_cache: redis
redis.host: 127.0.0.1
redis.port: $port" \
      benches/scenarios.sh --only i --sizes "$size" --rounds "$rounds" --kinds "$kinds" \
        --salt "$version" --no-docs > "$out/$mode/run.log" 2>&1 \
      || echo "   (scenarios.sh exited $?: see $out/$mode/run.log)" >&2
    if [ -n "$proxy_pid" ]; then kill "$proxy_pid" 2>/dev/null || true; wait "$proxy_pid" 2>/dev/null || true; proxy_pid=""; fi
  done
fi

python3 - "$out" "$size" "$delay" "$version" > "$out/table.md" <<'PY'
import json, os, statistics, sys
out, size, delay, version = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
# Every mode with results on disk (a run of some modes keeps the others' rows).
modes = [m for m in ("up", "slow", "down") if os.path.isdir(os.path.join(out, m))]
label = {"up": "up", "slow": f"slow (+{delay} ms each way)", "down": "down (nothing listening)"}
name = {"brine": "brine mofm", "salt": f"salt-master {version}"}

def load(mode, kind):
    p = os.path.join(out, mode, f"{kind}-{size}.json")
    if not os.path.exists(p):
        return None, {}
    with open(p) as f:
        run = json.load(f)
    redis = {}
    q = os.path.join(out, mode, f"{kind}-{size}.redis.jsonl")
    if os.path.exists(q):
        for line in open(q):
            j = json.loads(line)
            redis[j["jid"]] = j
    return run, redis

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None

rows, summary = [], {}
for mode in modes:
    for kind in ("brine", "salt"):
        run, redis = load(mode, kind)
        if run is None:
            continue
        rs = run.get("rounds", [])
        cli = [r["cli_secs"] for r in rs]
        shown = [r.get("returns", 0) for r in rs]
        cpu = sum(r.get("master_cpu_secs", 0) for r in rs)
        stored = [redis.get(r["jid"], {}).get("returns", 0) for r in rs]
        rate = [redis.get(r["jid"], {}).get("rate") for r in rs]
        peak = [redis.get(r["jid"], {}).get("peak_rate") for r in rs]
        summary[(mode, kind)] = {"cli": med(cli), "rate": med(rate), "peak": med(peak), "stored": stored, "shown": shown}
        f = lambda xs, fmt: " / ".join(fmt(x) for x in xs) if xs else "—"
        rows.append(
            f"| {label[mode]} | {name[kind]} | {f(cli, lambda x: f'{x:.2f}')} s | {f(shown, str)} "
            f"| {f(stored, str)} | {f(rate, lambda x: '—' if x is None else f'{x:,.0f}')} "
            f"| {f(peak, lambda x: '—' if x is None else f'{x:,.0f}')} | {cpu:.1f} s |")

print(f"{size} simulated minions (brine-swarm), `'*' test.ping -t 120`, {len(rs) if rows else 0} rounds per cell, "
      f"`master_job_cache: redis`, Redis 7 on loopback; generated by `benches/redis_fanout.sh --size {size} --delay {delay}`.\n")
print("| Redis | master | CLI per round | returns the minions saw acknowledged, per round | returns in Redis per round | into Redis, returns/s (load → last return) | peak returns/s (0.5 s) | master CPU, all rounds |")
print("|---|---|---|---|---|---|---|---|")
print("\n".join(rows))
print()
def ratio(a, b):
    return f"{a / b:.1f}x" if a and b else "—"
up_b, up_s = summary.get(("up", "brine"), {}), summary.get(("up", "salt"), {})
if up_b and up_s:
    print(f"- Returns per second reaching Redis, Redis up (median round): brine {up_b['rate'] or 0:,.0f}/s, "
          f"Salt {up_s['rate'] or 0:,.0f}/s: {ratio(up_b['rate'], up_s['rate'])} (goal ≥ 10x).")
for kind in ("brine", "salt"):
    cells = [(m, summary.get((m, kind), {}).get("cli")) for m in modes]
    if any(c for _, c in cells):
        print(f"- {name[kind]}: median CLI time " + ", ".join(f"Redis {m} {c:.2f} s" if c else f"Redis {m} —" for m, c in cells) + ".")
PY
cat "$out/table.md"
if [ "$docs" = 1 ]; then
  python3 - "$out/table.md" docs/performance.md <<'PY'
import sys
table, doc = open(sys.argv[1]).read(), sys.argv[2]
text = open(doc).read()
begin, end = "<!-- redis fanout:begin -->\n", "<!-- redis fanout:end -->\n"
if begin in text and end in text:
    a, b = text.index(begin), text.index(end)
    text = text[:a] + begin + table + text[b:]
else:
    text += "\n" + begin + table + end
open(doc, "w").write(text)
PY
fi
