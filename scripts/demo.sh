#!/usr/bin/env bash
# The main job on embedded defaults: a brine master (mofm) on loopback, a few brine minions and,
# when the Salt peer is installed (scripts/salt-peer.sh), real salt-minions too; then
# `brine '*' test.ping` through mofm's API, the way an operator would run `salt '*' test.ping`.
#   scripts/demo.sh [BRINE_MINIONS] [SALT_VERSION]
# Everything lives in a temporary directory and is stopped on exit. KEEP=1 leaves it running
# (the script prints how to use and stop it).
set -euo pipefail
. "$(dirname "$0")/wait-answering.sh"
cd "$(dirname "$0")/.."
n="${1:-3}"
version="${2:-3007.17}"
peers="${BRINE_SALT_PEERS:-$HOME/.cache/brine/salt-peers}"

cargo build -q --locked --bins
bin="$(pwd)/target/debug"
work="$(mktemp -d /tmp/brine-demo.XXXXXX)"
pids=()
cleanup() {
  if [ "${KEEP:-0}" = 1 ]; then
    echo "left running: brine -c $work/etc ... ; stop with: kill ${pids[*]}" >&2
    return
  fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pub=$(free_port); ret=$(free_port); api=$(free_port)

mkdir -p "$work/etc"
cat > "$work/etc/master" <<CONF
root_dir: $work/master
interface: 127.0.0.1
publish_port: $pub
ret_port: $ret
rest_cherrypy: {host: 127.0.0.1, port: $api}
auto_accept: True
CONF
"$bin/mofm" -c "$work/etc" -l warning >"$work/mofm.log" 2>&1 &
pids+=($!)
echo "mofm: publish 127.0.0.1:$pub, ret 127.0.0.1:$ret, API http://127.0.0.1:$api" >&2

ids=()
for i in $(seq -w 0 $((n - 1))); do
  id="brine-minion-$i"
  mkdir -p "$work/$id"
  cat > "$work/$id/minion" <<CONF
root_dir: $work/$id/root
id: $id
master: 127.0.0.1
master_port: $ret
publish_port: $pub
CONF
  "$bin/minion" -c "$work/$id" -l warning >"$work/$id.log" 2>&1 &
  pids+=($!)
  ids+=("$id")
  echo "  $id: brine minion" >&2
done

if [ -x "$peers/$version/bin/salt-minion" ]; then
  id="salt-minion-$version"
  mkdir -p "$work/$id/etc"
  cat > "$work/$id/etc/minion" <<CONF
root_dir: $work/$id/root
id: $id
master: 127.0.0.1
master_port: $ret
publish_port: $pub
user: $(id -un)
CONF
  env -u PYTHONPATH PATH="$peers/$version/bin:/usr/local/bin:/usr/bin:/bin" \
    "$peers/$version/bin/salt-minion" -c "$work/$id/etc" -l warning >"$work/$id.log" 2>&1 &
  pids+=($!)
  ids+=("$id")
  echo "  $id: real salt-minion $version" >&2
else
  echo "  (no real salt-minion: run scripts/salt-peer.sh to add one)" >&2
fi

# Wait until every key is accepted, then until every minion answers (a real minion takes a few
# seconds to start and subscribe).
deadline=$((SECONDS + 90))
for id in "${ids[@]}"; do
  while [ ! -e "$work/master/etc/salt/pki/master/minions/$id" ] && [ $SECONDS -lt $deadline ]; do
    sleep 0.2
  done
done
want=${#ids[@]}
if ! got=$(wait_answering "$work/etc" "$want" "$deadline" 3); then
  echo "only $got of $want minions answered; logs in $work" >&2
  KEEP=1
  exit 1
fi

echo >&2
echo "\$ brine '*' test.ping" >&2
"$bin/brine" -c "$work/etc" '*' test.ping
