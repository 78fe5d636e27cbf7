# Sourced by demo.sh and topology.sh (needs $bin, the brine binaries).
#
# wait_answering CONFIG_DIR WANT DEADLINE TIMEOUT: run `brine -c CONFIG_DIR '*' test.ping -t
# TIMEOUT` every second until WANT minions answer True (returns 0) or $SECONDS reaches DEADLINE
# (prints how many answered last, returns 1).
wait_answering() {
  local got
  while :; do
    got=$("$bin/brine" -c "$1" '*' test.ping -t "$4" --static --out json 2>/dev/null |
      python3 -c 'import json,sys; print(sum(1 for v in json.load(sys.stdin).values() if v is True))' 2>/dev/null || echo 0)
    [ "$got" = "$2" ] && return 0
    if [ $SECONDS -ge "$3" ]; then
      echo "$got"
      return 1
    fi
    sleep 1
  done
}
