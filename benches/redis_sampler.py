#!/usr/bin/env python3
"""Sample how fast a master's returns reach Redis, while a fan-out runs (issue 17).

Polls a Redis server every INTERVAL_MS for Salt's redis-returner keys: each `load:<jid>` (the
job, written when it is published) and `HLEN ret:<jid>` (its returns). Writes, per jid seen,
a JSON line when stopped (SIGTERM/SIGINT):

    {"jid": ..., "returns": N, "load_seen": s, "first_return": s, "last_return": s,
     "rate": returns per second from the job's load to its last return,
     "peak_rate": the largest returns/s over any window of WINDOW_MS}

Times are seconds since the sampler started; a job starts at its jid's timestamp (the master's
clock, this machine). Jobs are found through keyspace notifications (the sampler sets
`notify-keyspace-events K$`). Speaks RESP itself (no redis-py needed).

    benches/redis_sampler.py HOST PORT OUT.jsonl [INTERVAL_MS] [WINDOW_MS]
"""

import json
import signal
import socket
import sys
import time


class Redis:
    def __init__(self, host, port):
        self.addr = (host, port)
        self.sock = None
        self.buf = b""

    def connect(self):
        self.sock = socket.create_connection(self.addr, timeout=2)
        self.buf = b""

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n):
        while len(self.buf) < n + 2:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n + 2 :]
        return data

    def _reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind in (b"+", b"-"):
            return rest.decode()
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n).decode()
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply() for _ in range(n)]
        raise ValueError(f"bad reply {line!r}")

    def pipeline(self, cmds):
        if self.sock is None:
            self.connect()
        out = b""
        for cmd in cmds:
            out += b"*%d\r\n" % len(cmd)
            for a in cmd:
                a = a.encode()
                out += b"$%d\r\n%s\r\n" % (len(a), a)
        self.sock.sendall(out)
        return [self._reply() for _ in cmds]


def jid_time(jid):
    """A Salt jid's own timestamp (YYYYmmddHHMMSSffffff, local time) as a Unix time."""
    try:
        return time.mktime(time.strptime(jid[:14], "%Y%m%d%H%M%S")) + int(jid[14:20]) / 1e6
    except ValueError:
        return None


def main():
    host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    interval = (int(sys.argv[4]) if len(sys.argv) > 4 else 20) / 1000
    window = (int(sys.argv[5]) if len(sys.argv) > 5 else 500) / 1000
    r = Redis(host, port)
    t0 = time.time()
    jobs = {}  # jid -> {"load_seen": t, "samples": [(t, hlen)]}
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    # New jobs arrive as keyspace notifications for `load:*` (SET), so a job is known from
    # its first millisecond without scanning the keyspace.
    sub = None
    while not stop:
        now = time.time() - t0
        try:
            if sub is None:
                r.pipeline([["CONFIG", "SET", "notify-keyspace-events", "K$"]])
                sub = Redis(host, port)
                sub.pipeline([["PSUBSCRIBE", "__keyspace@*__:load:*"]])
                sub.sock.setblocking(False)
            while True:
                try:
                    chunk = sub.sock.recv(65536)
                except BlockingIOError:
                    break
                if not chunk:
                    raise ConnectionError("closed")
                sub.buf += chunk
            sub.sock.setblocking(True)
            while b"\r\n" in sub.buf:
                try:
                    msg = sub._reply()
                except (BlockingIOError, ConnectionError):
                    break
                if isinstance(msg, list) and msg and msg[0] == "pmessage":
                    jid = msg[2].split("load:", 1)[1]
                    if jid not in jobs:
                        jobs[jid] = {"load_seen": now, "samples": []}
            sub.sock.setblocking(False)
            # Returns of the jobs still growing (the last few seen).
            live = sorted(jobs, key=lambda j: jobs[j]["load_seen"])[-4:]
            if live:
                lens = r.pipeline([["HLEN", f"ret:{j}"] for j in live])
                t = time.time() - t0
                for j, n in zip(live, lens):
                    smp = jobs[j]["samples"]
                    if not smp or smp[-1][1] != n:
                        smp.append((t, n))
        except (OSError, ConnectionError, ValueError):
            r.sock = None
            sub = None
        time.sleep(interval)
    with open(path, "w") as f:
        for jid, job in sorted(jobs.items(), key=lambda kv: kv[1]["load_seen"]):
            s = [x for x in job["samples"] if x[1] > 0]
            if not s:
                f.write(json.dumps({"jid": jid, "returns": 0, "load_seen": job["load_seen"]}) + "\n")
                continue
            total = s[-1][1]
            last = s[-1][0]
            # The job starts at its jid's own time when that is known (and earlier than seen).
            jt = jid_time(jid)
            start = min(job["load_seen"], jt - t0) if jt is not None else job["load_seen"]
            span = max(last - start, 1e-3)
            # Peak: the most returns that landed within any WINDOW (from each sample back to
            # the last sample at least WINDOW before it, or the load when there is none).
            peak = 0.0
            for hi in range(len(s)):
                t_hi, n_hi = s[hi]
                before = [x for x in s[:hi] if x[0] <= t_hi - window]
                t_lo, n_lo = before[-1] if before else (start, 0)
                peak = max(peak, (n_hi - n_lo) / max(t_hi - t_lo, window))
            f.write(
                json.dumps(
                    {
                        "jid": jid,
                        "returns": total,
                        "start": round(start, 3),
                        "load_seen": round(job["load_seen"], 3),
                        "first_return": round(s[0][0], 3),
                        "last_return": round(last, 3),
                        "rate": round(total / span, 1),
                        "peak_rate": round(peak, 1),
                    }
                )
                + "\n"
            )


if __name__ == "__main__":
    main()
