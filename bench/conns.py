"""The cost of a connection: memory per idle keep-alive connection and
hello-world throughput with 1,000 concurrent connections, for rsvisor's
demo, nginx `return 200` and gunicorn + UvicornWorker (2 workers each,
pinned to CPU 1; the clients on CPU 0).

Idle connections: IDLE connections each send one request, read the answer
and stay open; the figure is the growth of the summed RSS of all the
server's processes (after a warm-up of WARM connections) divided by IDLE.
The descriptor limit is raised for this run only (servers inherit it).

Writes bench/results-conns.md. Loopback only; every run is bounded.
"""

import asyncio
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
from lib import OUT, ROOT, Server, free_port, nginx_server, rss_kib, wrk  # noqa: E402

QUICK = os.environ.get("BENCH_QUICK") == "1"
IDLE = 2000 if QUICK else 10_000
WARM = 200
# Idle connections park after 1 s and workers give freed memory back every
# 5 s: hold long enough for both.
HOLD_S = 7.0
CONNECTING = 200
WRK_CONNS = 1000
WRK_SECONDS = 3 if QUICK else 8
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


def rsvisor(port):
    cfg = os.path.join(OUT, f"conns-rsvisor-{port}.toml")
    with open(cfg, "w") as f:
        f.write(f'[server]\nbind = ["127.0.0.1:{port}"]\nworkers = 2\nbacklog = 4096\n'
                f'[http]\nkeepalive_timeout = 120\n[log]\naccess_log = ""\n')
    return Server("conns-rsvisor", [bench.DEMO, "serve", cfg], port, cpus=bench.SERVER_CPU)


def nginx(port):
    return nginx_server("conns-nginx", port, os.path.join(OUT, f"conns-nginx-{port}"), f"""
    keepalive_timeout 120;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = / {{ default_type text/plain; return 200 "hello world"; }}
    }}""", bench.SERVER_CPU, main="worker_rlimit_nofile 20000;", connections=16384)


def gunicorn(port):
    return bench.gunicorn(port, extra=("--keep-alive", "120", "--backlog", "4096",
                                       "--worker-connections", "20000"))


SERVERS = [("rsvisor demo", rsvisor), ("nginx return 200", nginx),
           ("gunicorn + UvicornWorker", gunicorn)]


def tree_rss_kib(server):
    return sum(rss_kib(p) for p in server.tree())


async def open_idle(port, n):
    """Opens n connections, one request each; returns the open ones."""
    sem = asyncio.Semaphore(CONNECTING)
    conns = []
    failures = 0

    async def one():
        nonlocal failures
        async with sem:
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 20)
                w.write(REQUEST)
                head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 20)
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                if not head.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(head[:40])
                await asyncio.wait_for(r.readexactly(length), 20)
                conns.append((r, w))
            except Exception:
                failures += 1

    await asyncio.gather(*(one() for _ in range(n)))
    return conns, failures


def close_all(conns):
    for _, w in conns:
        w.close()


async def idle_memory(server):
    warm, _ = await open_idle(server.port, WARM)
    close_all(warm)
    # The same wait as after: what the warm-up freed is given back (rsvisor
    # returns free memory every 5 s) before the baseline is read.
    await asyncio.sleep(HOLD_S)
    before = tree_rss_kib(server)
    conns, failures = await open_idle(server.port, IDLE)
    await asyncio.sleep(HOLD_S)
    # Every connection still open on the server's side?
    alive = sum(1 for r, _ in conns if not r.at_eof())
    after = tree_rss_kib(server)
    close_all(conns)
    await asyncio.sleep(0.2)
    return {
        "opened": len(conns), "failed": failures, "alive": alive,
        "before_mib": before / 1024, "after_mib": after / 1024,
        "per_conn_kib": (after - before) / max(len(conns), 1),
    }


def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 40_000) if hard != resource.RLIM_INFINITY else 40_000
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < IDLE + 1000:
        sys.exit(f"the descriptor limit ({want}) is too low for {IDLE} connections")
    rows = {}
    for name, make in SERVERS:
        port = free_port()
        with make(port) as s:
            s.wait_ready("/")
            os.sched_setaffinity(0, {int(bench.LOAD_CPU)})
            mem = asyncio.run(idle_memory(s))
            load = wrk(s.url("/"), threads=1, conns=WRK_CONNS, duration=WRK_SECONDS,
                       cpus=bench.LOAD_CPU, extra=("--timeout", "10s"))
        rows[name] = {**mem, "rps": load["rps"], "errors": load["errors"],
                      "p99_ms": load["p99_ms"]}
        print(name, rows[name], flush=True)
    write(rows)


def write(rows):
    lines = [
        "# Connections: memory per idle connection, 1,000 concurrent connections",
        "",
        "`bench/run conns` (bench/conns.py). 2 workers each, servers on CPU 1, clients on",
        f"CPU 0. Idle: {IDLE:,} keep-alive connections, one request each, held {HOLD_S:.0f} s;",
        "memory per connection = growth of the summed RSS of all server processes",
        f"(over the RSS {HOLD_S:.0f} s after a warm-up of {WARM} connections closed) "
        "÷ connections. Throughput:",
        f"`wrk -t1 -c{WRK_CONNS} -d{WRK_SECONDS}s` on `/` (hello world).",
        "",
        "| server | idle conns open | RSS before MiB | RSS with idle conns MiB | KiB per idle conn | "
        f"req/s at {WRK_CONNS:,} conns | p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['alive']:,} of {IDLE:,} | {r['before_mib']:.1f} | {r['after_mib']:.1f} | "
            f"{r['per_conn_kib']:.2f} | {r['rps']:,.0f} | {r['p99_ms'] or 0:.1f} | {r['errors']} |"
        )
    text = "\n".join(lines) + "\n"
    with open(os.path.join(ROOT, "bench", "results-conns.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
