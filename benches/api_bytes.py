#!/usr/bin/env python3
"""Run a command under strace and report what it received from one TCP port: requests made
(connections) and bytes read from them. Measures what a CLI following a job costs, whatever
the CLI (brine before and after, salt's own): usage

    benches/api_bytes.py PORT LABEL OUTFILE -- COMMAND [ARGS...]

appends one JSON line {"label", "connections", "bytes", "seconds", "rc"} to OUTFILE.
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import time


def main() -> int:
    port, label, outfile = sys.argv[1], sys.argv[2], sys.argv[3]
    cmd = sys.argv[sys.argv.index("--") + 1 :]
    with tempfile.NamedTemporaryFile(prefix="api-bytes-", suffix=".strace", delete=False) as t:
        trace = t.name
    start = time.monotonic()
    rc = subprocess.call(
        ["strace", "-f", "-qq", "-e", "trace=connect,read,recvfrom,close", "-o", trace] + cmd,
        stdout=subprocess.DEVNULL,
    )
    seconds = time.monotonic() - start
    api_fds: dict[str, set[int]] = {}
    conns = 0
    total = 0
    connect_re = re.compile(r"^(\d+)\s+connect\((\d+),.*htons\((\d+)\)")
    io_re = re.compile(r"^(\d+)\s+(?:read|recvfrom)\((\d+),.*\)\s+=\s+(\d+)")
    close_re = re.compile(r"^(\d+)\s+close\((\d+)\)")
    with open(trace, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = connect_re.match(line)
            if m and m.group(3) == port:
                api_fds.setdefault("all", set()).add(int(m.group(2)))
                conns += 1
                continue
            m = io_re.match(line)
            if m and int(m.group(2)) in api_fds.get("all", set()):
                total += int(m.group(3))
                continue
            m = close_re.match(line)
            if m:
                api_fds.get("all", set()).discard(int(m.group(2)))
    os.unlink(trace)
    with open(outfile, "a", encoding="utf-8") as out:
        out.write(
            json.dumps(
                {"label": label, "connections": conns, "bytes": total, "seconds": round(seconds, 2), "rc": rc}
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
