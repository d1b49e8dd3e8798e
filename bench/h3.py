"""HTTP/3: rsvisor's demo over QUIC (2 workers, `http.http3 = true`) against
Hypercorn (2 workers, `--quic-bind`, aioquic; the hello-world ASGI app of
bench/apps/asgi_hello.py), and rsvisor's own HTTP/2 over TLS on the same
server. The servers are pinned to CPU 1, the client (bench/h3load.rs: quinn
+ h3, or hyper + rustls with --h2, one thread) to CPU 0; CONNS connections
with STREAMS requests in flight each, for SECONDS.

Each figure is the median of ROUNDS runs, alternating the servers; besides
requests per second and p99 it reports the server processes' CPU time per
answered request. Writes bench/results-h3.md. Loopback only; every run is
bounded.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

from lib import OUT, ROOT, Server, TICK, cpu_ticks, free_port, median
from tls import make_certs

SERVER_CPU = "1"
LOAD_CPU = "0"
QUICK = os.environ.get("BENCH_QUICK") == "1"
SECONDS = 2 if QUICK else 5
ROUNDS = 1 if QUICK else 3
CONNS = 20
STREAMS = 8
DEMO = os.path.join(ROOT, "target", "release", "examples", "demo")
H3LOAD = os.path.join(ROOT, "target", "release", "examples", "h3load")
VENV = os.path.join(ROOT, "bench", ".venv", "bin")
# (row, server, client protocol)
ROWS = [("rsvisor, HTTP/3", "rsvisor", "h3"),
        ("Hypercorn --quic-bind, HTTP/3", "hypercorn", "h3"),
        ("rsvisor, HTTP/2 over TLS", "rsvisor", "h2")]


def rsvisor(d):
    port = free_port()
    cfg = os.path.join(d, "rsvisor-h3.toml")
    with open(cfg, "w") as f:
        f.write(f'[server]\nbind = ["127.0.0.1:{port}"]\nworkers = 2\n'
                f'[http]\nhttp3 = true\n'
                f'[tls]\ncert = "{d}/ecdsa.pem"\nkey = "{d}/ecdsa.key"\n'
                f'[log]\naccess_log = ""\n')
    return Server("rsvisor-h3", [DEMO, "serve", cfg], port, cpus=SERVER_CPU)


def hypercorn(d):
    port = free_port()
    return Server("hypercorn-h3", [
        os.path.join(VENV, "hypercorn"), "--workers", "2",
        "--certfile", f"{d}/ecdsa.pem", "--keyfile", f"{d}/ecdsa.key",
        "--bind", f"127.0.0.1:{port}", "--quic-bind", f"127.0.0.1:{port}",
        "asgi_hello:app"], port, cpus=SERVER_CPU, cwd=os.path.join(ROOT, "bench", "apps"))


def h3load(port, ca, proto, seconds, conns=CONNS, streams=STREAMS):
    cmd = ["taskset", "-c", LOAD_CPU, H3LOAD, f"127.0.0.1:{port}", ca, str(conns),
           str(streams), str(seconds), "/"]
    if proto == "h2":
        cmd.append("--h2")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode != 0:
        raise RuntimeError(f"h3load failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout)


def wait_h3(server, ca, proto):
    """Waits until one request over `proto` is answered."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited: see {server.log_path}")
        try:
            r = h3load(server.port, ca, proto, 1, conns=1, streams=1)
            if r["ok"] > 0:
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{server.name} does not answer over {proto}: see {server.log_path}")


def measure(server, ca, proto):
    wait_h3(server, ca, proto)
    pids = server.tree()
    before = cpu_ticks(pids)
    r = h3load(server.port, ca, proto, SECONDS)
    used = (cpu_ticks(set(pids) | set(server.tree())) - before) / TICK
    r["cpu_us"] = used / r["ok"] * 1e6 if r["ok"] else None
    return r


def main():
    os.makedirs(OUT, exist_ok=True)
    d = tempfile.mkdtemp(prefix="h3-", dir=OUT)
    make_certs(d)
    ca = os.path.join(d, "ca.pem")
    makers = {"rsvisor": rsvisor, "hypercorn": hypercorn}
    samples = {row: [] for row, _, _ in ROWS}
    for _ in range(ROUNDS):
        for row, server, proto in ROWS:
            with makers[server](d) as s:
                samples[row].append(measure(s, ca, proto))
    lines = [
        "# HTTP/3",
        "",
        f"bench/run h3, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs: servers on CPU "
        f"{SERVER_CPU}, the client (bench/h3load.rs, one thread) on CPU {LOAD_CPU}; "
        f"{CONNS} connections x {STREAMS} requests in flight, {SECONDS} s, `GET /` "
        f"(hello world), median of {ROUNDS}.",
        "",
        "| server | requests/s | p99 | CPU per request | failed |",
        "|---|---:|---:|---:|---:|",
    ]
    rps = {}
    for row, _, _ in ROWS:
        runs = samples[row]
        rps[row] = median([r["rps"] for r in runs])
        p99 = median([r["p99_us"] for r in runs]) / 1000
        cpu = [r["cpu_us"] for r in runs if r["cpu_us"] is not None]
        failed = sum(r["failed"] for r in runs)
        lines.append(f"| {row} | {rps[row]:,.0f} | {p99:.1f} ms | "
                     f"{median(cpu):.0f} us | {failed} |" if cpu else
                     f"| {row} | {rps[row]:,.0f} | {p99:.1f} ms | - | {failed} |")
    h3, hyp, h2 = (rps[r] for r, _, _ in ROWS)
    lines += [
        "",
        f"rsvisor HTTP/3 = **{h3 / hyp:.1f}x** Hypercorn's HTTP/3 (target 10x) and "
        f"**{h3 / h2:.2f}x** rsvisor's HTTP/2 over TLS (target 0.5x).",
        "",
    ]
    text = "\n".join(lines)
    with open(os.path.join(ROOT, "bench", "results-h3.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
