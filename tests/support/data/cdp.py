#!/usr/bin/env python3
"""Drive a headless Chromium for brine's browser tests, over the DevTools protocol on a pipe.

Usage: cdp.py <chromium binary> <profile dir>

Reads one command per line on stdin (JSON) and answers one JSON line on stdout:
  {"navigate": url}                       -> {"ok": true}
  {"eval": js}                            -> {"value": <result>}   (promises are awaited)
  {"wait": js, "timeout": seconds}        -> {"value": <first truthy result>} or {"error": ...}
  {"screenshot": path}                    -> {"ok": true}
  {"quit": true}                          -> exits
Errors are {"error": "..."}. Console messages and uncaught exceptions of the page are kept and
returned by {"console": true}. Standard library only: the test machine needs no Python package.
"""

import base64
import json
import os
import subprocess
import sys
import time


class Chromium:
    def __init__(self, binary, profile):
        # Chromium reads commands on fd 3 and writes answers on fd 4 (--remote-debugging-pipe).
        to_child_r, self.to_child = os.pipe()
        self.from_child, from_child_w = os.pipe()
        os.set_inheritable(to_child_r, True)
        os.set_inheritable(from_child_w, True)

        # A shell puts the pipe ends on fds 3 and 4, then becomes Chromium.
        redirect = f'exec "$0" "$@" 3<&{to_child_r} 4>&{from_child_w}'
        self.proc = subprocess.Popen(
            [
                "sh",
                "-c",
                redirect,
                binary,
                "--headless=new",
                "--remote-debugging-pipe",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--window-size=1400,1000",
                "--user-data-dir=" + profile,
                "about:blank",
            ],
            pass_fds=(to_child_r, from_child_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(profile, "chromium.log"), "wb"),
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self.buf = b""
        self.next_id = 0
        self.session = None
        self.console = []
        target = None
        deadline = time.time() + 30
        while target is None and time.time() < deadline:
            targets = self.call("Target.getTargets")["targetInfos"]
            target = next((t for t in targets if t["type"] == "page"), None)
            if target is None:
                time.sleep(0.2)
        if target is None:
            raise RuntimeError("Chromium opened no page")
        self.session = self.call(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )["sessionId"]
        self.call("Page.enable")
        self.call("Runtime.enable")

    def _send(self, msg):
        data = json.dumps(msg).encode() + b"\0"
        while data:
            n = os.write(self.to_child, data)
            data = data[n:]

    def _read(self):
        while b"\0" not in self.buf:
            chunk = os.read(self.from_child, 1 << 16)
            if not chunk:
                raise RuntimeError("Chromium closed its DevTools pipe")
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method, params=None):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if self.session and not method.startswith("Target."):
            msg["sessionId"] = self.session
        self._send(msg)
        while True:
            m = self._read()
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error'].get('message')}")
                return m.get("result", {})
            self._event(m)

    def _event(self, m):
        method = m.get("method", "")
        p = m.get("params", {})
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
            self.console.append(f"console.{p.get('type')}: {text}")
        elif method == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            self.console.append(
                "exception: " + d.get("exception", {}).get("description", d.get("text", ""))
            )

    def evaluate(self, js):
        r = self.call(
            "Runtime.evaluate",
            {"expression": js, "awaitPromise": True, "returnByValue": True},
        )
        if "exceptionDetails" in r:
            d = r["exceptionDetails"]
            raise RuntimeError(
                "page script failed: "
                + d.get("exception", {}).get("description", d.get("text", ""))
            )
        return r.get("result", {}).get("value")


def main():
    chrome = Chromium(sys.argv[1], sys.argv[2])
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        try:
            if cmd.get("quit"):
                break
            if "navigate" in cmd:
                chrome.call("Page.navigate", {"url": cmd["navigate"]})
                out = {"ok": True}
            elif "eval" in cmd:
                out = {"value": chrome.evaluate(cmd["eval"])}
            elif "wait" in cmd:
                deadline = time.time() + float(cmd.get("timeout", 20))
                out = None
                last_error = None
                while time.time() < deadline:
                    try:
                        v = chrome.evaluate(cmd["wait"])
                        if v:
                            out = {"value": v}
                            break
                    except RuntimeError as e:  # the page may be between documents
                        last_error = str(e)
                    time.sleep(0.25)
                if out is None:
                    out = {"error": f"timed out waiting for: {cmd['wait']}"
                           + (f" ({last_error})" if last_error else "")}
            elif "screenshot" in cmd:
                shot = chrome.call("Page.captureScreenshot", {"format": "png"})
                with open(cmd["screenshot"], "wb") as f:
                    f.write(base64.b64decode(shot["data"]))
                out = {"ok": True}
            elif cmd.get("console"):
                out = {"value": chrome.console}
            else:
                out = {"error": f"unknown command {cmd}"}
        except Exception as e:  # noqa: BLE001 - reported to the test, which fails on it
            out = {"error": str(e)}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()
    chrome.proc.terminate()
    try:
        chrome.proc.wait(10)
    except subprocess.TimeoutExpired:
        chrome.proc.kill()


if __name__ == "__main__":
    main()
