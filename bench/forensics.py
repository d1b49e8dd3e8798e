"""Measurements for hang forensics and canary reloads (release binaries,
loopback only, bounded in time):

- hang forensics: the demo with `timeout = 2` gets `GET /block?ms=20000`;
  from the worker's JSON log: how late the master noticed the missed
  heartbeat (silence at detection minus the timeout), how long capturing
  the stacks took, how long until the event was in the log, and its size;
- a stopped worker (SIGSTOP): how long from SIGSTOP until it was reaped;
- canary reloads: two workers under `wrk -c32` on `GET /`, a reload to a
  generation that answers 500 to everything (`DEMO_FAIL_RATE=1`) with
  `canary = 10`: how many requests the bad generation answered before it
  was rolled back, and how long the rollback took; then a good reload with
  and without a canary (`canary = 3`) for what it costs in time.

Run: bench/run forensics (or python3 bench/forensics.py after a release
build). Prints a Markdown table; ROUNDS=N repeats (default 5); ONLY=canary
runs the bad-canary rounds alone and prints each.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import datetime

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib import ROOT, Server, free_port, median, wrk  # noqa: E402

DEMO = os.path.join(ROOT, "target/release/examples/demo")
RSVISOR = os.path.join(ROOT, "target/release/rsvisor")
ROUNDS = int(os.environ.get("ROUNDS", "5"))


def start(name, text):
    d = tempfile.mkdtemp(prefix="rsv-fx-")
    port = free_port()
    path = os.path.join(d, "app.toml")
    with open(path, "w") as f:
        f.write(text.format(port=port, dir=d))
    s = Server(name, [DEMO, "serve", path], port)
    s.wait_ready("/health")
    return s, path


def status(cfg):
    out = subprocess.run([RSVISOR, "status", cfg, "--json"], capture_output=True,
                         text=True, timeout=10).stdout
    return json.loads(out)


def wait(pred, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.02)
    raise RuntimeError("timed out")


def log_events(s):
    with open(s.log_path) as f:
        for line in f:
            try:
                yield json.loads(line)
            except ValueError:
                pass


def ts(e):
    return datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp()


HUNG = """[server]
bind = ["127.0.0.1:{port}"]
workers = 1
control_socket = "{dir}/ctl.sock"
[lifecycle]
timeout = 2
[log]
format = "json"
access_log = ""
"""


def one_hang():
    s, cfg = start("forensics-hang", HUNG)
    try:
        def block():
            try:
                urllib.request.urlopen(s.url("/block?ms=20000"), timeout=30).read()
            except Exception:
                pass
        threading.Thread(target=block, daemon=True).start()

        def event():
            for e in log_events(s):
                if e["fields"].get("message", "").startswith("worker forensics"):
                    return e
            return None
        ev = wait(event, 20)
        detect = next(e for e in log_events(s)
                      if e["fields"].get("message", "").startswith("worker missed"))
        f = ev["fields"]
        return {
            "detect_late_ms": int(detect["fields"]["silent_ms"]) - 2000,
            "capture_ms": int(f["capture_ms"]),
            "to_log_ms": (ts(ev) - ts(detect)) * 1000,
            "bytes": int(f["bytes"]),
            "obtained": f["dump"] == "obtained",
        }
    finally:
        s.stop()


def one_stop():
    s, cfg = start("forensics-stop", HUNG)
    try:
        pid = status(cfg)["workers"][0]["pid"]
        t0 = time.monotonic()
        os.kill(pid, signal.SIGSTOP)
        wait(lambda: any(e["pid"] == pid for e in status(cfg)["recent_exits"]), 20)
        return (time.monotonic() - t0) * 1000
    finally:
        s.stop()


CANARY = """[server]
bind = ["127.0.0.1:{port}"]
workers = 2
control_socket = "{dir}/ctl.sock"
[lifecycle]
canary = {canary}
[log]
access_log = ""
"""


def reload_under_load(cfg_text_after, canary):
    """Starts a server, puts wrk -c32 on it, reloads to `cfg_text_after`;
    returns (reload JSON report, 5xx answered, wrk result)."""
    s, cfg = start("canary", CANARY.replace("{canary}", str(canary)))
    try:
        with open(cfg) as f:
            base = f.read()
        with open(cfg, "w") as f:
            f.write(base + cfg_text_after)
        res = {}
        load = threading.Thread(target=lambda: res.update(
            wrk(s.url("/"), threads=2, conns=32, duration=8, cpus=None)))
        load.start()
        time.sleep(1)
        out = subprocess.run([RSVISOR, "reload", cfg], capture_output=True, text=True,
                             timeout=120)
        load.join()
        st = status(cfg)


        return st["last_reload"], st["totals"]["responses_by_class"][4], res, out.returncode
    finally:
        s.stop()


def main():
    if os.environ.get("ONLY") == "canary":
        bad = [reload_under_load('\n[app]\nenv = { DEMO_FAIL_RATE = "1" }\n', 10)
               for _ in range(ROUNDS)]
        for b in bad:
            print(b[0]["result"], b[1], b[0]["duration_ms"], b[2].get("requests"), b[0]["message"][:100])
        return
    hangs = [one_hang() for _ in range(ROUNDS)]
    stops = [one_stop() for _ in range(ROUNDS)]
    bad = [reload_under_load('\n[app]\nenv = { DEMO_FAIL_RATE = "1" }\n', 10)
           for _ in range(ROUNDS)]
    good_plain = [reload_under_load("\n", 0) for _ in range(ROUNDS)]
    good_canary = [reload_under_load("\n", 3) for _ in range(ROUNDS)]

    lines = []

    def out(line):
        lines.append(line)
        sys.stdout.write(line + "\n")

    out(f"Release build, {ROUNDS} rounds each, loopback, 2 workers for the canary rows.\n")
    out("| measure | median | max |")
    out("|---|---|---|")

    def row(name, xs, unit=""):
        out(f"| {name} | {median(xs):.0f}{unit} | {max(xs):.0f}{unit} |")
    row("missed heartbeat noticed after the timeout (ms)", [h["detect_late_ms"] for h in hangs])
    row("stacks captured (ms)", [h["capture_ms"] for h in hangs])
    row("noticed → event in the log (ms, incl. symbolizing)", [h["to_log_ms"] for h in hangs])
    row("event size (bytes of stacks)", [h["bytes"] for h in hangs])
    out(f"| dumps obtained | {sum(h['obtained'] for h in hangs)}/{len(hangs)} | |")
    row("SIGSTOPped worker: SIGSTOP → reaped (ms; timeout 2 s)", stops)
    row("bad canary: 5xx answered before rollback (wrk -c32)", [b[1] for b in bad])
    row("bad canary: reload start → rolled back (ms)", [b[0]["duration_ms"] for b in bad])
    results = {b[0]["result"] for b in bad} | {f"exit {b[3]}" for b in bad}
    out(f"| bad canary: results | {', '.join(sorted(results))} | |")
    row("good reload without canary (ms)", [g[0]["duration_ms"] for g in good_plain])
    row("good reload with canary = 3 (ms)", [g[0]["duration_ms"] for g in good_canary])
    errs = sum(g[2].get("errors", 0) for g in good_plain + good_canary)
    out(f"| failed requests in good reloads | {errs} | |")
    with open(os.path.join(ROOT, "bench", "results-forensics.md"), "w") as f:
        f.write("# Hang forensics and canary reloads (bench/run forensics)\n\n")
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
