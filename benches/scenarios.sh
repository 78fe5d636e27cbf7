#!/usr/bin/env bash
# brine vs real Salt on this machine, in one run, with brine-swarm (issue 6):
#   (i)   `'*' test.ping` fan-out at each size: mofm vs salt-master (defaults + auto_accept)
#   (ii)  the unpaced auth storm of the largest size, against the RSA ceiling
#   (iii) master PSS per connected minion at the largest size
# Prints a markdown table and rewrites the generated section of docs/performance.md.
#
#   benches/scenarios.sh [--sizes "1000 5000 9000"] [--rounds 3] [--salt 3007.17] [--no-docs]
#
# Needs the Salt peer (scripts/salt-peer.sh VERSION); builds brine in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
sizes="1000 5000 9000"
rounds=3
version=3007.17
docs=1
while [ $# -gt 0 ]; do
  case "$1" in
    --sizes) sizes="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --salt) version="$2"; shift 2 ;;
    --no-docs) docs=0; shift ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
peer="${BRINE_SALT_PEERS:-$HOME/.cache/brine/salt-peers}/$version/bin"
[ -x "$peer/salt-master" ] || { echo "no salt-master $version: scripts/salt-peer.sh $version" >&2; exit 2; }
ulimit -n 20000
cargo build --release -q --locked --bins
bin="$(pwd)/target/release"
out="$(pwd)/target/scenarios"
mkdir -p "$out"
work="$(mktemp -d /tmp/brine-scenarios.XXXXXX)"
master_pid=""
cleanup() {
  [ -n "$master_pid" ] && kill -- -"$master_pid" 2>/dev/null || true
  sleep 1
  [ -n "$master_pid" ] && kill -9 -- -"$master_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 300); do
    python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1",int(sys.argv[1])),1)' "$1" 2>/dev/null && return 0
    sleep 0.2
  done
  echo "nothing listens on 127.0.0.1:$1" >&2; return 1
}

# start_master KIND DIR PUB RET -> sets master_pid and cli
start_master() {
  local kind=$1 dir=$2 pub=$3 ret=$4
  mkdir -p "$dir/etc"
  if [ "$kind" = brine ]; then
    cat > "$dir/etc/master" <<CONF
root_dir: $dir/root
interface: 127.0.0.1
publish_port: $pub
ret_port: $ret
rest_cherrypy: {host: 127.0.0.1, port: $(free_port)}
auto_accept: True
log_level: warning
CONF
    setsid "$bin/mofm" -c "$dir/etc" > "$dir/master.log" 2>&1 &
    master_pid=$!
    cli="$bin/brine -c $dir/etc"
  else
    cat > "$dir/etc/master" <<CONF
root_dir: $dir/root
interface: 127.0.0.1
publish_port: $pub
ret_port: $ret
user: $(id -un)
auto_accept: True
log_level: warning
CONF
    setsid env -u PYTHONPATH "$peer/salt-master" -c "$dir/etc" > "$dir/master.log" 2>&1 &
    master_pid=$!
    cli="env -u PYTHONPATH $peer/salt -c $dir/etc"
  fi
  wait_port "$ret"
  sleep 2
}

stop_master() {
  kill -- -"$master_pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$master_pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 -- -"$master_pid" 2>/dev/null || true
  master_pid=""
}

# run KIND N -> target/scenarios/KIND-N.json
run() {
  local kind=$1 n=$2 dir="$work/$1-$2"
  local pub ret
  pub=$(free_port); ret=$(free_port)
  start_master "$kind" "$dir" "$pub" "$ret"
  echo "== $kind, $n minions" >&2
  "$bin/brine-swarm" --master "127.0.0.1:$ret" --publish-port "$pub" -n "$n" \
    --prefix "sc-" --wait 900 --rounds "$rounds" --pids "$master_pid" \
    --publish "$cli '*' test.ping --out quiet -t 120" --json > "$out/$kind-$n.json"
  stop_master
}

for n in $sizes; do
  run brine "$n"
  run salt "$n"
done

python3 - "$out" "$version" "$rounds" $sizes > "$out/table.md" <<'PY'
import json, os, platform, statistics, subprocess, sys, datetime
out, version, rounds, sizes = sys.argv[1], sys.argv[2], sys.argv[3], [int(s) for s in sys.argv[4:]]
def load(kind, n):
    return json.load(open(os.path.join(out, f"{kind}-{n}.json")))
cores = os.cpu_count()
mem = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)
machine = f"{cores} cores, {mem} GiB, {datetime.date.today()}"
# RSA ceiling: 2 private-key operations per auth (OAEP decrypt of the token, sign), per core.
ceiling_per_core = 1750
rows = []
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
for n in sizes:
    b, s = load("brine", n), load("salt", n)
    bt = med([r["complete_secs"] for r in b["rounds"]])
    st = med([r["complete_secs"] for r in s["rounds"]])
    miss_b = sum(r["missing"] for r in b["rounds"])
    miss_s = sum(r["missing"] for r in s["rounds"])
    ratio = f"{st / bt:.1f}x" if bt and st else "—"
    fmt = lambda t, miss: (f"{t:.2f} s" if t is not None else "did not complete") + (f" ({miss} returns missing)" if miss else "")
    rows.append((f"(i) `'*' test.ping`, {n} minions: all returns in (median of {rounds})",
                 f"`benches/scenarios.sh --sizes {n}`", fmt(bt, miss_b), fmt(st, miss_s), ratio))
n = max(sizes)
b, s = load("brine", n), load("salt", n)
def storm(x):
    cpu = x["auth_master_cpu_secs"]
    per_cpu = x["authed"] / cpu if cpu else 0
    return f'{x["authed"]}/{x["minions"]} in {x["auth_secs"]:.1f} s; {per_cpu:.0f} auths per master CPU-s ({100 * per_cpu / ceiling_per_core:.0f}% of the RSA ceiling)'
rows.append((f"(ii) unpaced auth storm, {n} minions", f"`benches/scenarios.sh --sizes {n}`", storm(b), storm(s),
             f'{(s["auth_secs"] / b["auth_secs"]):.1f}x' if b["auth_secs"] else "—"))
rows.append((f"(iii) master PSS per connected minion, {n} minions", f"`benches/scenarios.sh --sizes {n}`",
             f'{b["master_pss_kb_per_minion"]:.1f} KB', f'{s["master_pss_kb_per_minion"]:.1f} KB',
             f'{s["master_pss_kb_per_minion"] / b["master_pss_kb_per_minion"]:.1f}x' if b["master_pss_kb_per_minion"] else "—"))
print("| scenario | command | brine | Salt %s | ratio | machine |" % version)
print("|---|---|---|---|---|---|")
for r in rows:
    print("| " + " | ".join(r + (machine,)) + " |")
PY
cat "$out/table.md"
if [ "$docs" = 1 ]; then
  python3 - "$out/table.md" docs/performance.md <<'PY'
import sys
table, doc = open(sys.argv[1]).read(), sys.argv[2]
text = open(doc).read()
begin, end = "<!-- scenarios:begin -->", "<!-- scenarios:end -->"
block = f"{begin}\n{table}{end}"
if begin in text:
    pre, rest = text.split(begin, 1)
    text = pre + block + rest.split(end, 1)[1]
else:
    text = text.rstrip() + "\n\n## brine vs Salt with brine-swarm (generated by `benches/scenarios.sh`)\n\n" + block + "\n"
open(doc, "w").write(text)
PY
  echo "docs/performance.md updated" >&2
fi
