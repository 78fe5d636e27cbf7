#!/usr/bin/env bash
# Architecture #5 on loopback, on embedded defaults: two hot masters of masters (mofm, shared
# keys), three brine syndics each connected to both, and N minions in failover mode across the
# syndics; then `brine '*' test.ping` from each MoM.
#
#   scripts/topology.sh [-n N] [--salt VERSION] [--keep]
#
#   -n N            minions (default 6)
#   --salt VERSION  real salt-minions of that release (scripts/salt-peer.sh VERSION) instead of
#                   brine minions
#   --keep          leave everything running and print how to use and stop it
#
# MoMs listen on 127.0.1.1 and 127.0.1.2, syndics on 127.0.2.1-3, all on the same publish/ret
# ports (Salt minions use one publish_port and master_port for every master in their list).
# Everything lives in a temporary directory, removed on exit unless --keep.
set -euo pipefail
. "$(dirname "$0")/wait-answering.sh"
cd "$(dirname "$0")/.."
n=6
salt=""
keep=0
while [ $# -gt 0 ]; do
  case "$1" in
    -n) n="$2"; shift 2 ;;
    --salt) salt="$2"; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
peers="${BRINE_SALT_PEERS:-$HOME/.cache/brine/salt-peers}"
if [ -n "$salt" ] && [ ! -x "$peers/$salt/bin/salt-minion" ]; then
  echo "no salt-minion $salt in $peers; install it with: scripts/salt-peer.sh $salt" >&2
  exit 2
fi

cargo build -q --locked --bins
bin="${BRINE_BIN_DIR:-$(pwd)/target/debug}"
work="$(mktemp -d /tmp/brine-topology.XXXXXX)"
pids=()
cleanup() {
  if [ "$keep" = 1 ]; then
    echo >&2
    echo "left running in $work:" >&2
    echo "  $bin/brine -c $work/mom-1/etc '*' test.ping      (or mom-2)" >&2
    echo "  stop with: kill ${pids[*]}; rm -rf $work" >&2
    return
  fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

moms=(127.0.1.1 127.0.1.2)
syndics=(127.0.2.1 127.0.2.2 127.0.2.3)
# One publish/ret port pair free on every address.
read -r pub ret < <(python3 - "${moms[@]}" "${syndics[@]}" <<'PY'
import random, socket, sys
addrs = sys.argv[1:]
def free(port):
    for a in addrs:
        s = socket.socket()
        try:
            s.bind((a, port))
        except OSError:
            return False
        finally:
            s.close()
    return True
while True:
    p = random.randrange(20000, 30000)
    if free(p) and free(p + 1):
        print(p, p + 1)
        break
PY
)
free_port() { python3 -c 'import socket,sys; s=socket.socket(); s.bind((sys.argv[1],0)); print(s.getsockname()[1])' "$1"; }

echo "architecture #5 in $work (publish port $pub, ret port $ret)" >&2
for i in 1 2; do
  addr=${moms[$((i - 1))]}
  api=$(free_port "$addr")
  d="$work/mom-$i"
  mkdir -p "$d/etc"
  cat > "$d/etc/master" <<CONF
root_dir: $work
pki_dir: /mom-pki
cachedir: /mom-$i/cache
interface: $addr
publish_port: $pub
ret_port: $ret
rest_cherrypy: {host: $addr, port: $api}
auto_accept: True
order_masters: True
master_id: mom-$i
CONF
  "$bin/mofm" -c "$d/etc" -l info >"$d/log" 2>&1 &
  pids+=($!)
  echo "  mom-$i    mofm     $addr  (API http://$addr:$api)" >&2
done
masters_list=$(printf '%s, ' "${moms[@]}"); masters_list="[${masters_list%, }]"
for j in 1 2 3; do
  addr=${syndics[$((j - 1))]}
  d="$work/syndic-$j"
  mkdir -p "$d/etc"
  cat > "$d/etc/master" <<CONF
root_dir: $work
pki_dir: /syndic-pki
cachedir: /syndic-$j/cache
interface: $addr
publish_port: $pub
ret_port: $ret
auto_accept: True
syndic_master: $masters_list
syndic_master_port: $ret
CONF
  cat > "$d/etc/minion" <<CONF
id: syndic-$j
root_dir: $work
pki_dir: /syndic-$j/minion-pki
cachedir: /syndic-$j/minion-cache
CONF
  "$bin/syndic" -c "$d/etc" -l info >"$d/log" 2>&1 &
  pids+=($!)
  echo "  syndic-$j  syndic   $addr  -> mom-1, mom-2" >&2
done

ids=()
for k in $(seq 1 "$n"); do
  id=$(printf 'minion-%02d' "$k")
  d="$work/$id"
  mkdir -p "$d/etc"
  # Each minion starts on a different syndic and fails over along the others.
  first=$(( (k - 1) % 3 ))
  list=""
  for o in 0 1 2; do list="$list${syndics[$(( (first + o) % 3 ))]}, "; done
  cat > "$d/etc/minion" <<CONF
id: $id
root_dir: $d
master: [${list%, }]
master_type: failover
random_master: False
master_port: $ret
publish_port: $pub
master_alive_interval: 5
retry_dns: 0
auth_timeout: 5
CONF
  if [ -n "$salt" ]; then
    echo "user: $(id -un)" >> "$d/etc/minion"
    env -u PYTHONPATH PATH="$peers/$salt/bin:/usr/local/bin:/usr/bin:/bin" \
      "$peers/$salt/bin/salt-minion" -c "$d/etc" -l info >"$d/log" 2>&1 &
    kind="salt-minion $salt"
  else
    "$bin/minion" -c "$d/etc" -l info >"$d/log" 2>&1 &
    kind="brine minion"
  fi
  pids+=($!)
  ids+=("$id")
  echo "  $id  $kind, failover ${list%, }" >&2
done

# Wait for every minion to answer through each MoM (keys are auto-accepted; real minions take a
# few seconds to start, a syndic's minions only count once they have authenticated, and each
# syndic links to each MoM on its own schedule).
deadline=$((SECONDS + 120))
want=${#ids[@]}
for i in 1 2; do
  if ! got=$(wait_answering "$work/mom-$i/etc" "$want" "$deadline" 5); then
    echo "only $got of $want minions answered through mom-$i; logs in $work" >&2
    keep=1
    exit 1
  fi
done

for i in 1 2; do
  echo >&2
  echo "\$ brine -c mom-$i/etc '*' test.ping        # through mom-$i" >&2
  "$bin/brine" -c "$work/mom-$i/etc" '*' test.ping
done
