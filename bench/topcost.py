"""CPU used by the master while `rsvisor top` clients are attached (release
build, loopback, bounded): the demo with 2 workers under `wrk -c32` for
20 s each with 0, 1 and 5 clients that do what `top` does (one control
connection each, `status` every second). Prints a Markdown table and writes
bench/results-operator.md.

Run: bench/run operator (or python3 bench/topcost.py after a release build).
"""

import os
import socket
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib import ROOT, Server, free_port, wrk  # noqa: E402

DEMO = os.path.join(ROOT, "target/release/examples/demo")
SECONDS = int(os.environ.get("SECONDS_EACH", "20"))


def cpu_ns(pid):
    """CPU time of a process in nanoseconds (schedstat: finer than ticks)."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


def top_client(path, stop, answered):
    """One control connection asking `status` every second, like `top`."""
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    f = s.makefile("rwb")
    while not stop.is_set():
        f.write(b"status\n")
        f.flush()
        if f.readline():
            answered.append(1)
        stop.wait(1.0)
    s.close()


def measure(clients):
    d = tempfile.mkdtemp(prefix="rsv-top-")
    port = free_port()
    cfg = os.path.join(d, "app.toml")
    ctl = os.path.join(d, "ctl.sock")
    with open(cfg, "w") as f:
        f.write(f'[server]\nbind = ["127.0.0.1:{port}"]\nworkers = 2\n'
                f'control_socket = "{ctl}"\n[log]\naccess_log = ""\n')
    with Server("operator", [DEMO, "serve", cfg], port) as s:
        s.wait_ready("/health")
        stop = threading.Event()
        answered = []
        threads = [threading.Thread(target=top_client, args=(ctl, stop, answered))
                   for _ in range(clients)]
        for t in threads:
            t.start()
        time.sleep(1)
        before = cpu_ns(s.pid)
        res = wrk(s.url("/"), threads=1, conns=32, duration=SECONDS, cpus=None)
        used = (cpu_ns(s.pid) - before) / 1e9
        stop.set()
        for t in threads:
            t.join()
        return used / SECONDS * 100, res["rps"], len(answered)


def main():
    rows = [(n, *measure(n)) for n in (0, 1, 5)]
    lines = [
        f"Master CPU while `top` clients are attached (2 demo workers under wrk -c32, {SECONDS} s each).",
        "",
        "| top clients | master CPU | status answers | fleet req/s |",
        "|---|---|---|---|",
    ]
    for n, cpu, rps, answers in rows:
        lines.append(f"| {n} | {cpu:.3f}% | {answers} | {rps:,.0f} |")
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    with open(os.path.join(ROOT, "bench", "results-operator.md"), "w") as f:
        f.write("# rsvisor top: cost to the master (bench/run operator)\n\n" + text)


if __name__ == "__main__":
    main()
