"""bench/run apps: apps as people write them, against their peers in the
same run (loopback only; servers pinned to CPU 1, load generators to CPU 0):

1. hello world: an axum Router under rsvisor (bench/axum_hello.rs) vs the
   demo (native Handler), 2 workers each: req/s and server CPU per request
   (targets: >= 0.95x the demo's req/s, <= 1.05x its CPU per request);
2. WebSocket echo round trips: the axum example under rsvisor (2 workers)
   vs the same kind of axum app under plain axum::serve in one process
   (target >= 0.95x);
3. a reload with 1,000 open WebSockets: time until every old worker has
   exited, and how many sockets got close code 1001 (all of them).

Writes bench/results-apps.md and prints it.
"""

import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib import ROOT, Server, children, free_port, median, wrk_with_cpu  # noqa: E402

QUICK = os.environ.get("BENCH_QUICK") == "1"
REL = os.path.join(ROOT, "target", "release", "examples")
SERVER_CPU = "1"
LOAD_CPU = "0"
ROUNDS = 1 if QUICK else 3
SECS = 4 if QUICK else 8


def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def config(port, workers=2, extra=""):
    d = tempfile.mkdtemp(prefix="rsv-apps-")
    path = os.path.join(d, "app.toml")
    with open(path, "w") as f:
        f.write(f"""[server]
bind = ["127.0.0.1:{port}"]
workers = {workers}
control_socket = "{d}/ctl.sock"
[log]
access_log = ""
{extra}""")
    return path


def supervised(name, binary, port, workers=2, extra=""):
    return Server(name, [os.path.join(REL, binary), "serve", config(port, workers, extra)],
                  port, cpus=SERVER_CPU)


def plain_axum(port):
    return Server("axum-plain", [os.path.join(REL, "axum_plain"), f"127.0.0.1:{port}"], port,
                  cpus=SERVER_CPU)


def wsload(mode, url, conns, secs):
    cmd = ["taskset", "-c", LOAD_CPU, os.path.join(REL, "wsload"), mode, url, str(conns), str(secs)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=secs + 120).stdout
    return json.loads(out.strip().splitlines()[-1])


def hello():
    rows = {"demo": [], "axum": []}
    for _ in range(ROUNDS):
        for name, binary in (("demo", "demo"), ("axum", "axum_hello")):
            port = free_port()
            with supervised(f"apps-{name}", binary, port) as s:
                s.wait_ready("/")
                time.sleep(0.3)
                rows[name].append(wrk_with_cpu(s, s.url("/"), conns=64, duration=SECS,
                                               cpus=LOAD_CPU))
    out = {}
    for name, rs in rows.items():
        out[name] = {
            "rps": median([r["rps"] for r in rs]),
            "p99_ms": median([r["p99_ms"] for r in rs]),
            "cpu": median([r["cpu_us_per_req"] for r in rs]),
            "errors": sum(r["errors"] for r in rs),
        }
    return out


def ws_echo():
    rows = {"rsvisor": [], "plain": []}
    for _ in range(ROUNDS):
        port = free_port()
        with supervised("apps-axum-ws", "axum", port) as s:
            s.wait_ready("/")
            time.sleep(0.3)
            rows["rsvisor"].append(wsload("echo", f"ws://127.0.0.1:{port}/ws", 64, SECS))
        port = free_port()
        with plain_axum(port) as s:
            s.wait_ready("/")
            time.sleep(0.3)
            rows["plain"].append(wsload("echo", f"ws://127.0.0.1:{port}/ws", 64, SECS))
    return {k: {"rps": median([r["rps"] for r in v]), "p99_us": median([r["p99_us"] for r in v]),
                "errors": sum(r["errors"] for r in v)} for k, v in rows.items()}


def reload_with_websockets(n=1000):
    port = free_port()
    with supervised("apps-ws-reload", "demo", port) as s:
        s.wait_ready("/")
        old = children(s.pid)
        cmd = ["taskset", "-c", LOAD_CPU, os.path.join(REL, "wsload"), "hold",
               f"ws://127.0.0.1:{port}/ws", str(n), "60"]
        load = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        opened = load.stdout.readline().split()
        t0 = time.time()
        s.signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(p in children(s.pid) for p in old):
            time.sleep(0.005)
        old_gone_ms = (time.time() - t0) * 1000
        out = json.loads(load.stdout.read().strip().splitlines()[-1])
        load.wait()
        out["opened"] = int(opened[1]) if len(opened) > 1 else 0
        out["old_workers_gone_ms"] = old_gone_ms
        out["last_close_ms"] = out["last_end_unix_ms"] - t0 * 1000
        return out


def main():
    raise_fd_limit()
    h = hello()
    w = ws_echo()
    r = reload_with_websockets()
    ratio_rps = h["axum"]["rps"] / h["demo"]["rps"] if h["demo"]["rps"] else 0
    ratio_cpu = h["axum"]["cpu"] / h["demo"]["cpu"] if h["demo"]["cpu"] else 0
    ratio_ws = w["rsvisor"]["rps"] / w["plain"]["rps"] if w["plain"]["rps"] else 0
    lines = [
        f"Servers pinned to CPU {SERVER_CPU}, load to CPU {LOAD_CPU}; median of {ROUNDS} rounds of {SECS} s.",
        "",
        "| hello world, 2 workers, wrk -c64 | req/s | p99 ms | CPU µs/req | errors |",
        "|---|---|---|---|---|",
    ]
    for name, label in (("demo", "demo (native Handler)"), ("axum", "axum Router under rsvisor")):
        x = h[name]
        lines.append(f"| {label} | {x['rps']:,.0f} | {x['p99_ms']:.2f} | {x['cpu']:.2f} | {x['errors']} |")
    lines += [
        "",
        "| WebSocket echo, 64 connections | round trips/s | p99 µs | errors |",
        "|---|---|---|---|",
        f"| axum under rsvisor, 2 workers | {w['rsvisor']['rps']:,.0f} | {w['rsvisor']['p99_us']} | {w['rsvisor']['errors']} |",
        f"| axum::serve, one process | {w['plain']['rps']:,.0f} | {w['plain']['p99_us']} | {w['plain']['errors']} |",
        "",
        f"| reload (HUP) with {r['opened']:,} open WebSockets | |",
        "|---|---|",
        f"| sockets that got close 1001 | {r['close_1001']:,} of {r['opened']:,} (other close {r['close_other']}, cut {r['cut']}, still open {r['still_open']}) |",
        f"| HUP → last socket closed, ms | {r['last_close_ms']:.0f} |",
        f"| HUP → every old worker exited, ms | {r['old_workers_gone_ms']:.0f} |",
        "",
        "| target | measured | |",
        "|---|---|---|",
        f"| axum req/s ≥ 0.95 × demo | {ratio_rps:.2f} | {'met' if ratio_rps >= 0.95 else '**missed**'} |",
        f"| axum CPU/req ≤ 1.05 × demo | {ratio_cpu:.2f} | {'met' if ratio_cpu <= 1.05 else '**missed**'} |",
        f"| WebSocket echo ≥ 0.95 × axum::serve | {ratio_ws:.2f} | {'met' if ratio_ws >= 0.95 else '**missed**'} |",
        f"| every socket gets 1001 on reload | {r['close_1001']}/{r['opened']} | {'met' if r['close_1001'] == r['opened'] else '**missed**'} |",
    ]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(ROOT, "bench", "results-apps.md"), "w") as f:
        f.write("# bench/run apps\n\n" + text)
    print(text)


if __name__ == "__main__":
    main()
