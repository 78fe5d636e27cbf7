#!/usr/bin/env bash
# brine vs real Salt on this machine, in one run, with brine-swarm (issue 6):
#   (i)   `'*' test.ping` fan-out at each size: mofm vs salt-master (defaults + auto_accept)
#   (ii)  the unpaced auth storm of the largest size, against the RSA ceiling
#   (iii) master PSS per connected minion at the largest size
#   (iv)  2 MoMs + 6 syndics, 50,000 minions: completion, MoM CPU and memory
#   (v)   one syndic relaying to 5,000 minions: brine syndic vs salt-syndic (each under its MoM)
#   (vi)  a highstate-sized file fetch: every minion at once lists the file server, then hashes
#         and fetches 100 files (2 MB) as a 3007 minion does, at each --fetch-sizes
#   (vii) a _pillar storm: every minion at once asks for its pillar (a top.sls of templated
#         files), at each --fetch-sizes
# Prints a markdown table and updates those rows in the generated section of
# docs/performance.md (rows of scenarios not run are kept).
#
#   benches/scenarios.sh [--only "i ii iii iv v vi vii"] [--sizes "1000 5000 9000"] [--rounds 3]
#                        [--fetch-sizes "1000 5000"]
#                        [--tier 50000] [--relay 5000] [--kinds "brine salt"] [--salt 3007.17]
#                        [--no-docs] [--report]
# SCENARIO_LOG_LEVEL=info keeps the daemons' info logs (in the run's work directory; warning by
# default).
# BRINE_BIN_DIR=DIR runs the binaries in DIR instead of building (before/after runs), and
# SCENARIO_OUT=DIR writes the JSON results there (default target/scenarios).
# SCENARIO_KEEP=1 keeps the work directory with the daemons' logs.
# SCENARIO_REDIS_SAMPLE="HOST PORT" samples the Redis job cache during (i)'s rounds
# (benches/redis_sampler.py -> KIND-N.redis.jsonl; benches/redis_fanout.sh uses it).
# SCENARIO_MASTER_CONF="key: value..." adds those lines to every master file (e.g.
# "master_job_cache: redis" and the redis.* options).
# MOFM_ENV="VAR=value ..." starts the (i)-(iii) mofm with those variables (allocator experiments,
# e.g. GLIBC_TUNABLES=glibc.malloc.arena_max=2).
#
# --kinds runs only some of the two stacks; --report runs nothing and rebuilds the table from
# the JSON results already in target/scenarios.
# Masters keep their root_dir on tmpfs (/dev/shm) when there is one, brine and Salt alike: an
# auth storm creates one key file per minion, and on a file system that just had thousands of
# files deleted (the previous run) ext4's inode allocator took a third of the master's CPU.
# Needs the Salt peer (scripts/salt-peer.sh VERSION); builds brine in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
sizes="1000 5000 9000"
rounds=3
log_level=${SCENARIO_LOG_LEVEL:-warning}
version=3007.17
docs=1
only="i ii iii iv v vi vii"
fetch_sizes="1000 5000"
extra_conf="${SCENARIO_MASTER_CONF:-}"
kinds="brine salt"
report=0
tier=50000
relay=5000
while [ $# -gt 0 ]; do
  case "$1" in
    --only) only="$2"; shift 2 ;;
    --kinds) kinds="$2"; shift 2 ;;
    --report) report=1; shift ;;
    --tier) tier="$2"; shift 2 ;;
    --relay) relay="$2"; shift 2 ;;
    --sizes) sizes="$2"; shift 2 ;;
    --fetch-sizes) fetch_sizes="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --salt) version="$2"; shift 2 ;;
    --no-docs) docs=0; shift ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
peer="${BRINE_SALT_PEERS:-$HOME/.cache/brine/salt-peers}/$version/bin"
[ -x "$peer/salt-master" ] || { echo "no salt-master $version: scripts/salt-peer.sh $version" >&2; exit 2; }
# Salt's redis returner (master_job_cache: redis) needs redis-py in the peer's venv.
case " $kinds ${SCENARIO_MASTER_CONF:-}" in
  *salt*redis*)
    "$peer/python" -c 'import redis' 2>/dev/null || "$peer/python" -m pip install -q redis ;;
esac
ulimit -n 20000
# BRINE_BIN_DIR: run the binaries of another build (an older commit's, for before/after runs).
if [ -n "${BRINE_BIN_DIR:-}" ]; then
  bin="$BRINE_BIN_DIR"
else
  cargo build --release -q --locked --bins
  bin="$(pwd)/target/release"
fi
out="${SCENARIO_OUT:-$(pwd)/target/scenarios}"
mkdir -p "$out"
tmp=/tmp
[ -d /dev/shm ] && [ -w /dev/shm ] && tmp=/dev/shm
work="$(mktemp -d "$tmp/brine-scenarios.XXXXXX")"
master_pid=""
pids=()
# stop_groups PID...: TERM each process group, wait up to 10 s for the leaders, KILL the rest
stop_groups() {
  local p alive
  for p in "$@"; do kill -- -"$p" 2>/dev/null || true; done
  for _ in $(seq 1 100); do
    alive=0
    for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for p in "$@"; do kill -9 -- -"$p" 2>/dev/null || true; done
}
cleanup() {
  stop_groups $master_pid "${pids[@]}"
  # SCENARIO_KEEP=1 keeps the run's work directory (the daemons' logs) and says where.
  if [ -n "${SCENARIO_KEEP:-}" ]; then echo "kept: $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
want() { case " $only " in *" $1 "*) return 0 ;; esac; return 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# wait_addr HOST PORT [TRIES]: until something listens (TRIES x 0.2 s, default 600)
wait_addr() {
  for _ in $(seq 1 "${3:-600}"); do
    python3 -c 'import socket,sys; socket.create_connection((sys.argv[1],int(sys.argv[2])),1)' "$1" "$2" 2>/dev/null && return 0
    sleep 0.2
  done
  echo "nothing listens on $1:$2" >&2; return 1
}
wait_port() { wait_addr 127.0.0.1 "$1" 300; }

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
log_level: $log_level
$extra_conf
CONF
    setsid env ${MOFM_ENV:-} "$bin/mofm" -c "$dir/etc" > "$dir/master.log" 2>&1 &
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
log_level: $log_level
$extra_conf
CONF
    setsid env -u PYTHONPATH "$peer/salt-master" -c "$dir/etc" > "$dir/master.log" 2>&1 &
    master_pid=$!
    cli="env -u PYTHONPATH $peer/salt -c $dir/etc"
  fi
  wait_port "$ret"
  sleep 2
}

stop_master() {
  stop_groups "$master_pid"
  master_pid=""
}

# run KIND N -> target/scenarios/KIND-N.json
run() {
  local kind=$1 n=$2 dir="$work/$1-$2"
  local pub ret
  pub=$(free_port); ret=$(free_port)
  start_master "$kind" "$dir" "$pub" "$ret"
  echo "== $kind, $n minions" >&2
  local sampler=""
  if [ -n "${SCENARIO_REDIS_SAMPLE:-}" ]; then
    # shellcheck disable=SC2086 # "HOST PORT"
    python3 benches/redis_sampler.py $SCENARIO_REDIS_SAMPLE "$out/$kind-$n.redis.jsonl" &
    sampler=$!
  fi
  "$bin/brine-swarm" --master "127.0.0.1:$ret" --publish-port "$pub" -n "$n" \
    --prefix "sc-" --wait 900 --rounds "$rounds" --pids "$master_pid" \
    --publish "$cli '*' test.ping --out quiet -t 120" --json > "$out/$kind-$n.json"
  if [ -n "$sampler" ]; then
    # Returns still on their way (a slow Redis) get SCENARIO_REDIS_SETTLE seconds (10).
    sleep "${SCENARIO_REDIS_SETTLE:-10}"
    kill -TERM "$sampler"; wait "$sampler" || true
  fi
  stop_master
}

# ---- (vi) and (vii): what a state run asks of the master ------------------------------------
# The tree: 100 files of 20 kB (2 MB) for (vi); a top.sls of four templated pillar files for
# (vii). Both masters serve the same directories.
make_tree() {
  local t="$work/tree"
  [ -d "$t" ] && return 0
  mkdir -p "$t/salt/files" "$t/pillar"
  python3 - "$t/salt/files" <<'PY'
import os, sys
for i in range(100):
    with open(os.path.join(sys.argv[1], f"f{i:03d}.conf"), "wb") as f:
        f.write(bytes((i * 7 + j) % 251 for j in range(20_000)))
PY
  printf 'base:\n  "*":\n    - web\n' > "$t/salt/top.sls"
  cat > "$t/pillar/top.sls" <<'SLS'
base:
  '*':
    - common
    - users
  'G@os:Debian':
    - debian
  'G@roles:web':
    - web
SLS
  cat > "$t/pillar/common.sls" <<'SLS'
site:
  name: {{ grains['id'] }}
  kernel: {{ grains['kernel'] }}
  cpus: {{ grains['num_cpus'] * 2 }}
SLS
  cat > "$t/pillar/users.sls" <<'SLS'
users:
{% for u in ['alice', 'bob', 'carol', 'dave', 'erin', 'frank', 'grace', 'heidi'] %}
  {{ u }}:
    uid: {{ 2000 + loop.index }}
    shell: /bin/bash
    home: /home/{{ u }}
{% endfor %}
SLS
  cat > "$t/pillar/debian.sls" <<'SLS'
pkgs:
{% for p in ['nginx', 'curl', 'vim', 'git'] %}
  - {{ p }}
{% endfor %}
apt:
  mirror: http://deb.example.org/{{ grains['os_family'] | lower }}
SLS
  cat > "$t/pillar/web.sls" <<'SLS'
nginx:
  workers: {{ grains['num_cpus'] }}
  server_name: {{ grains['id'] }}.example.org
SLS
}

# run_workload KIND N WORKLOAD -> target/scenarios/KIND-WORKLOAD-N.json
run_workload() {
  local kind=$1 n=$2 wl=$3 dir="$work/$1-$3-$2"
  local pub ret
  make_tree
  pub=$(free_port); ret=$(free_port)
  extra_conf="file_roots: {base: [$work/tree/salt]}
pillar_roots: {base: [$work/tree/pillar]}
${SCENARIO_MASTER_CONF:-}"
  start_master "$kind" "$dir" "$pub" "$ret"
  extra_conf="${SCENARIO_MASTER_CONF:-}"
  echo "== $kind, $n minions, workload $wl" >&2
  "$bin/brine-swarm" --master "127.0.0.1:$ret" --publish-port "$pub" -n "$n" \
    --prefix "wl-" --wait 900 --pids "$master_pid" --workload "$wl" --fetch 100 \
    --json > "$out/$kind-$wl-$n.json"
  stop_master
}

# ---- (iv) and (v): masters of masters over syndics ------------------------------------------
# Every daemon of a tier has its own loopback address and the same port pair (Salt's
# syndic_master list takes hosts and one syndic_master_port). The CLI runs with its default
# timeout: completion is what the MoM's CLI shows (its time, the returns it prints).
tier_pub=$(free_port); tier_ret=$(free_port); tier_api=$(free_port)
tier_net=0

# spawn NAME CMD... : start a process group, remember it
spawn() {
  local log=$1; shift
  setsid "$@" > "$log" 2>&1 &
  pids+=($!)
}

stop_all() {
  stop_groups "${pids[@]}"
  pids=()
}


# run_tier KIND LABEL MOMS SYNDICS N -> target/scenarios/KIND-LABEL.json
run_tier() {
  local kind=$1 label=$2 moms=$3 syndics=$4 n=$5
  tier_net=$((tier_net + 1))
  local base="127.0.$((100 + tier_net))" dir="$work/$kind-$label"
  local mom_ips=() syn_ips=() mom_pids=() syn_pids=() masters=() i ip list=""
  for i in $(seq 1 "$moms"); do mom_ips+=("$base.$i"); done
  for i in $(seq 1 "$syndics"); do syn_ips+=("$base.$((10 + i))"); done
  for ip in "${mom_ips[@]}"; do list="$list, $ip"; done
  list="[${list#, }]"
  echo "== $kind: $moms MoM(s) + $syndics syndic(s), $n minions" >&2
  # Masters of masters (one key pair: the syndics of a multi-master tier need it).
  for i in $(seq 1 "$moms"); do
    ip=${mom_ips[$((i - 1))]}
    local d="$dir/mom-$i"
    mkdir -p "$d/etc"
    # pki_dir lives under root_dir (brine and Salt alike): the second MoM gets a copy of the
    # first one's key pair.
    if [ "$i" -gt 1 ]; then
      mkdir -p "$d/root/etc/salt/pki/master"
      cp "$dir/mom-1/root/etc/salt/pki/master/master".{pem,pub} "$d/root/etc/salt/pki/master/"
    fi
    if [ "$kind" = brine ]; then
      cat > "$d/etc/master" <<CONF
root_dir: $d/root
interface: $ip
publish_port: $tier_pub
ret_port: $tier_ret
rest_cherrypy: {host: $ip, port: $tier_api}
auto_accept: True
order_masters: True
master_id: mom-$i
log_level: $log_level
CONF
      spawn "$d/mom.log" "$bin/mofm" -c "$d/etc"
    else
      cat > "$d/etc/master" <<CONF
root_dir: $d/root
interface: $ip
publish_port: $tier_pub
ret_port: $tier_ret
user: $(id -un)
auto_accept: True
order_masters: True
log_level: $log_level
CONF
      spawn "$d/mom.log" env -u PYTHONPATH "$peer/salt-master" -c "$d/etc"
    fi
    mom_pids+=("${pids[-1]}")
    wait_addr "$ip" "$tier_ret"
  done
  # Syndic nodes.
  for i in $(seq 1 "$syndics"); do
    ip=${syn_ips[$((i - 1))]}
    local d="$dir/syndic-$i"
    mkdir -p "$d/etc"
    cat > "$d/etc/master" <<CONF
root_dir: $d/root
interface: $ip
publish_port: $tier_pub
ret_port: $tier_ret
auto_accept: True
syndic_master: $list
syndic_master_port: $tier_ret
log_level: $log_level
$( [ "$kind" = salt ] && echo "user: $(id -un)" )
CONF
    cat > "$d/etc/minion" <<CONF
id: $kind-syndic-$i
root_dir: $d/root
publish_port: $tier_pub
CONF
    if [ "$kind" = brine ]; then
      spawn "$d/syndic.log" "$bin/syndic" -c "$d/etc" -l "$log_level"
      syn_pids+=("${pids[-1]}")
    else
      spawn "$d/master.log" env -u PYTHONPATH "$peer/salt-master" -c "$d/etc"
      syn_pids+=("${pids[-1]}")
      spawn "$d/syndic.log" env -u PYTHONPATH "$peer/salt-syndic" -c "$d/etc" -l "$log_level"
      syn_pids+=("${pids[-1]}")
    fi
    masters+=(--master "$ip:$tier_ret:$tier_pub")
  done
  for ip in "${syn_ips[@]}"; do wait_addr "$ip" "$tier_ret"; done
  # Every syndic accepted by every MoM before the storm.
  local cli
  if [ "$kind" = brine ]; then
    cli="$bin/brine -c $dir/mom-1/etc"
  else
    cli="env -u PYTHONPATH $peer/salt -c $dir/mom-1/etc"
  fi
  for _ in $(seq 1 300); do
    local ok=1
    for i in $(seq 1 "$moms"); do
      local accepted="$dir/mom-$i/root/etc/salt/pki/master/minions"
      [ "$(ls "$accepted" 2>/dev/null | grep -c syndic)" -ge "$syndics" ] || ok=0
    done
    [ $ok = 1 ] && break
    sleep 1
  done
  [ $ok = 1 ] || echo "warning: not every syndic was accepted by every MoM" >&2
  sleep 5
  local key_pool=0
  [ "$n" -gt 9000 ] && key_pool=9000
  "$bin/brine-swarm" "${masters[@]}" -n "$n" --prefix "$label-" --wait 900 \
    --key-pool "$key_pool" --rounds "$rounds" --round-wait 300 --settle 10 \
    --pids "$(IFS=,; echo "${mom_pids[*]}")" --tier-pids "$(IFS=,; echo "${syn_pids[*]}")" \
    --publish "$cli '*' test.ping --out json" --json > "$out/$kind-$label.json.tmp"
  mv "$out/$kind-$label.json.tmp" "$out/$kind-$label.json"
  stop_all
}

# The auth ceiling on one core, measured first, while nothing else runs.
[ "$report" = 1 ] || "$bin/brine-swarm" --ceiling > "$out/ceiling.json"
if [ "$report" = 1 ]; then
  :
elif want i || want ii || want iii; then
  for n in $sizes; do
    for k in $kinds; do run "$k" "$n"; done
  done
fi
for wl in files pillar; do
  case $wl in files) sc=vi ;; *) sc=vii ;; esac
  if want $sc && [ "$report" = 0 ]; then
    for n in $fetch_sizes; do
      for k in $kinds; do run_workload "$k" "$n" "$wl"; done
    done
  fi
done
if want v && [ "$report" = 0 ]; then
  for k in $kinds; do run_tier "$k" relay 1 1 "$relay"; done
fi
if want iv && [ "$report" = 0 ]; then
  for k in $kinds; do run_tier "$k" tier 2 6 "$tier"; done
fi

python3 - "$out" "$version" "$rounds" "$only" "$tier" "$relay" "$fetch_sizes" $sizes > "$out/table.md" <<'PY'
import json, os, platform, statistics, subprocess, sys, datetime
out, version, rounds, only, tier, relay, fetch_sizes = sys.argv[1:8]
sizes = [int(s) for s in sys.argv[8:]]
fetch_sizes = [int(s) for s in fetch_sizes.split()]
only = only.split()
def load(kind, n):
    return json.load(open(os.path.join(out, f"{kind}-{n}.json")))
cores = os.cpu_count()
mem = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)
machine = f"{cores} cores, {mem} GiB, {datetime.date.today()}"
# The ceiling, measured in this run on one core: whole first-contact `_auth` decisions per
# second (one RSA-2048 private op for the reply signature, two public ops, the codec).
ceil = json.load(open(os.path.join(out, "ceiling.json")))
ceiling_per_core = ceil["first_contact_auths_per_sec"]
rsa_per_core = ceil["rsa2048_private_ops_per_sec"]
rows = []
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
if {"i", "ii", "iii"} & set(only):
  for n in sizes:
    b, s = load("brine", n), load("salt", n)
    bt = med([r["complete_secs"] for r in b["rounds"]])
    st = med([r["complete_secs"] for r in s["rounds"]])
    miss_b = sum(r["missing"] for r in b["rounds"])
    miss_s = sum(r["missing"] for r in s["rounds"])
    ratio = f"{st / bt:.1f}x" if bt and st else "—"
    fmt = lambda t, miss: (f"{t:.2f} s" if t is not None else "did not complete") + (f" ({miss} returns missing)" if miss else "")
    rows.append((f"(i) `'*' test.ping`, {n} minions: all returns in (median of {len(b['rounds'])})",
                 f"`benches/scenarios.sh --only i --sizes {n}`", fmt(bt, miss_b), fmt(st, miss_s), ratio))
  n = max(sizes)
  b, s = load("brine", n), load("salt", n)
  def storm(x):
    cpu = x["auth_master_cpu_secs"]
    per_cpu = x["authed"] / cpu if cpu else 0
    return (f'{x["authed"]}/{x["minions"]} in {x["auth_secs"]:.1f} s; {per_cpu:.0f} auths per master CPU-s = '
            f'{100 * per_cpu / ceiling_per_core:.0f}% of the first-contact ceiling ({ceiling_per_core:.0f}/s per core), '
            f'{100 * per_cpu / rsa_per_core:.0f}% of RSA-2048 private ops ({rsa_per_core:.0f}/s per core)'
            + net_cell(x.get("auth_net")))
  def net_cell(net):
    if not net:
      return ""
    return (f'; on loopback meanwhile: {net["listen_overflows"]} listen overflows, '
            f'{net["backlog_drops"]} input-backlog drops, {net["retransmits"]} retransmitted segments')
  rows.append((f"(ii) unpaced auth storm, {n} minions", f"`benches/scenarios.sh --only ii --sizes {n}`", storm(b), storm(s),
             f'{(s["auth_secs"] / b["auth_secs"]):.1f}x' if b["auth_secs"] else "—"))
  rows.append((f"(iii) master PSS per connected minion, {n} minions", f"`benches/scenarios.sh --only iii --sizes {n}`",
             f'{b["master_pss_kb_per_minion"]:.1f} KB', f'{s["master_pss_kb_per_minion"]:.1f} KB',
             f'{s["master_pss_kb_per_minion"] / b["master_pss_kb_per_minion"]:.1f}x' if b["master_pss_kb_per_minion"] else "—"))
def tier_cell(x):
    rs = x["rounds"]
    shown = [r.get("cli_returns", 0) for r in rs]
    cli = med([r["cli_secs"] for r in rs])
    mom_cpu = sum(r["master_cpu_secs"] for r in rs)
    mom_rss = max([r.get("master_rss_kb", 0) for r in rs] + [x["master_rss_kb"]]) / 1024
    tier_cpu = sum(r.get("tier_cpu_secs", 0) for r in rs)
    unacked = sum(r.get("missing", 0) for r in rs)
    return (f'{x["authed"]}/{x["minions"]} authenticated in {x["auth_secs"]:.0f} s; CLI median {cli:.2f} s, '
            f'returns shown per round {"/".join(str(v) for v in shown)} of {x["authed"]}; '
            f'MoM CPU {mom_cpu:.2f} s over {len(rs)} rounds, MoM RSS max {mom_rss:.0f} MB (all MoMs) '
            f'(per round: {"/".join(str(round(r.get("master_rss_kb", 0) / 1024)) for r in rs)} MB); '
            f'syndic tier CPU {tier_cpu:.2f} s, RSS {x["tier_rss_kb"] / 1024:.0f} MB'
            + (f'; {unacked} returns never acknowledged to their minion within 3 x 20 s' if unacked else '')), cli, mom_cpu, x
def tier_row(label, name, cmd):
    try:
        b = load("brine", label)
    except FileNotFoundError:
        return
    n = b["minions"]
    name = name.replace("{n}", str(n))
    cmd = cmd.replace("{n}", str(n))
    bc, bt, bcpu, bx = tier_cell(b)
    try:
        s = load("salt", label)
        if s["minions"] != n:
            raise FileNotFoundError
    except FileNotFoundError:
        rows.append((name, cmd, bc, "not run (`--kinds salt`; see below)", "—"))
        return
    sc, st, scpu, sx = tier_cell(s)
    ratio = f"CLI {st / bt:.1f}x, MoM CPU {scpu / bcpu:.1f}x, tier RSS {sx['tier_rss_kb'] / bx['tier_rss_kb']:.1f}x" if bt and bcpu and bx["tier_rss_kb"] else "—"
    rows.append((name, cmd, bc, sc, ratio))
if "v" in only:
    tier_row("relay", "(v) one syndic relaying to {n} minions (`'*' test.ping` from its MoM)", "`benches/scenarios.sh --only v --relay {n}`")
if "iv" in only:
    tier_row("tier", "(iv) 2 MoMs + 6 syndics, {n} minions (`'*' test.ping` from one MoM)", "`benches/scenarios.sh --only iv --tier {n}`")
def workload_row(sc, wl, n, name):
    try:
        b, s = load("brine", f"{wl}-{n}"), load("salt", f"{wl}-{n}")
    except FileNotFoundError:
        return
    def cell(x):
        w = x["workload"]
        return (f'{w["done"]}/{x["minions"]} done in {w["wall_secs"]:.1f} s'
                + (f' ({w["failed"]} failed)' if w["failed"] else '')
                + f', master CPU {w["master_cpu_secs"]:.1f} s, {w["requests"]} requests, {w["bytes"] / 1e6:.0f} MB')
    bw, sw = b["workload"], s["workload"]
    ratio = "—"
    if bw["wall_secs"] and bw["master_cpu_secs"]:
        ratio = f'wall {sw["wall_secs"] / bw["wall_secs"]:.1f}x, master CPU {sw["master_cpu_secs"] / bw["master_cpu_secs"]:.1f}x'
        if sw["failed"] or sw["done"] < s["minions"]:
            ratio += " (Salt did not finish every minion)"
    rows.append((name.replace("{n}", str(n)), f"`benches/scenarios.sh --only {sc} --fetch-sizes {n}`", cell(b), cell(s), ratio))
if "vi" in only:
    for n in fetch_sizes:
        workload_row("vi", "files", n, "(vi) highstate-sized file fetch (list, then hash, find and fetch 100 files, 2 MB), {n} minions at once")
if "vii" in only:
    for n in fetch_sizes:
        workload_row("vii", "pillar", n, "(vii) `_pillar` storm (top.sls of 4 templated files), {n} minions at once")
print("| scenario | command | brine | Salt %s | ratio | machine |" % version)
print("|---|---|---|---|---|---|")
for r in rows:
    print("| " + " | ".join(r + (machine,)) + " |")
PY
cat "$out/table.md"
if [ "$docs" = 1 ]; then
    python3 - "$out/table.md" docs/performance.md <<'PY'
import re, sys
table, doc = open(sys.argv[1]).read(), sys.argv[2]
text = open(doc).read()
begin, end = "<!-- scenarios:begin -->", "<!-- scenarios:end -->"
def rows(t):
    return [l for l in t.splitlines() if l.startswith("| (")]
def key(row):
    # "(i) ... 5000 minions" -> ("i", "5000"): one row per scenario and size
    m = re.match(r"\| \((\w+)\)[^|]*?(\d+) minions", row)
    return m.groups() if m else row
head = [l for l in table.splitlines() if l.startswith("|") and not l.startswith("| (")]
old = []
if begin in text:
    old = rows(text.split(begin, 1)[1].split(end, 1)[0])
new = rows(table)
merged = {key(r): r for r in old}
merged.update({key(r): r for r in new})
order = ["i", "ii", "iii", "iv", "v", "vi", "vii"]
body = sorted(merged.values(), key=lambda r: (order.index(key(r)[0]) if key(r)[0] in order else 9, int(key(r)[1]) if str(key(r)[1]).isdigit() else 0))
block = begin + "\n" + "\n".join(head + body) + "\n" + end
if begin in text:
    pre, rest = text.split(begin, 1)
    text = pre + block + rest.split(end, 1)[1]
else:
    text = text.rstrip() + "\n\n## brine vs Salt with brine-swarm (generated by `benches/scenarios.sh`)\n\n" + block + "\n"
open(doc, "w").write(text)
PY
  echo "docs/performance.md updated" >&2
fi
