#!/usr/bin/env bash
# Install a real Salt release from PyPI into a venv, as a test peer for brine.
#
#   scripts/salt-peer.sh 3007.17            # installs into $BRINE_SALT_PEERS/3007.17
#   scripts/salt-peer.sh all                # 3006.30, 3007.17 and 3008.5
#
# BRINE_SALT_PEERS defaults to ~/.cache/brine/salt-peers. The test-support crate looks there.
# A plain `pip install salt==X` fails on these machines (Salt pins versions the registry here
# does not carry), so Salt goes in with --no-deps and its runtime dependencies are listed here.
set -euo pipefail

ROOT="${BRINE_SALT_PEERS:-$HOME/.cache/brine/salt-peers}"
VERSIONS=("$@")
if [ "${#VERSIONS[@]}" -eq 0 ] || [ "${VERSIONS[0]}" = all ]; then
  VERSIONS=(3006.30 3007.17 3008.5)
fi

# py-spy (a Python stack sampler) goes in each venv too: the fault suite dumps the stacks of a
# salt-minion that stopped answering before it restarts it. Best effort: nothing needs it to run.
with_py_spy() {
  local dir="$1"
  [ -x "$dir/bin/py-spy" ] || "$dir/bin/pip" install -q --disable-pip-version-check py-spy \
    || echo "py-spy: not installed in $dir (only the fault suite's stack dumps use it)"
}

install_one() {
  local ver="$1" dir="$ROOT/$1"
  if [ -f "$dir/.brine-complete" ] && "$dir/bin/salt" --version 2>/dev/null | grep -q "$ver"; then
    echo "salt $ver: already installed in $dir"
    with_py_spy "$dir"
    return 0
  fi
  echo "salt $ver: installing into $dir"
  rm -rf "$dir"
  python3 -m venv "$dir"
  local pip="$dir/bin/pip"
  "$pip" install -q --disable-pip-version-check --no-deps "salt==$ver"
  local pyzmq='pyzmq<26'
  case "$ver" in 3008.*) pyzmq='pyzmq' ;; esac
  # pip warns about Salt's unmet pins; they are harmless for the daemons and CLIs we use.
  "$pip" install -q --disable-pip-version-check "$pyzmq" msgpack pycryptodomex tornado jinja2 \
    pyyaml markupsafe requests distro psutil packaging looseversion jmespath cryptography \
    aiohttp croniter python-dateutil setproctitle immutables contextvars jaraco.context \
    jaraco.functools jaraco.text more-itertools cherrypy cheroot python-gnupg certifi \
    pyopenssl attrs filelock zipp importlib-metadata pyasn1 2>&1 | grep -v -i 'requires\|incompatible' || true
  "$dir/bin/salt" --version
  with_py_spy "$dir"
  touch "$dir/.brine-complete"
}

# pepper (salt-api's command-line client, from PyPI) in a venv of its own: the API tests drive
# it against mofm.
PEPPER=0.7.6
install_pepper() {
  local dir="$ROOT/pepper-$PEPPER"
  if [ -f "$dir/.brine-complete" ] && [ -x "$dir/bin/pepper" ]; then
    return 0
  fi
  echo "pepper $PEPPER: installing into $dir"
  rm -rf "$dir"
  python3 -m venv "$dir"
  "$dir/bin/pip" install -q --disable-pip-version-check "salt-pepper==$PEPPER"
  touch "$dir/.brine-complete"
}

mkdir -p "$ROOT"
for v in "${VERSIONS[@]}"; do
  install_one "$v"
done
install_pepper
