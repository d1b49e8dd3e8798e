"""bench/run scale: how the cost grows with the work, rsvisor and its peers
in the same run (servers pinned to CPU 1, clients to CPU 0, loopback only,
every step bounded):

- memory of all server processes against idle keep-alive connections
  (rsvisor demo, nginx `return 200`, gunicorn + UvicornWorker; 2 workers
  each; connections opened in steps and held, one request each);
- requests/s and p99 against concurrent keep-alive connections (rsvisor
  demo, single-process hyper, nginx; `wrk -t1`);
- reload time (SIGHUP -> every worker a new pid and ready, read from the
  control socket) and the idle master's CPU against workers;
- `/metrics` scrape time against workers.

The descriptor limit is raised for this run only. Writes
bench/results-scale.md, bench/scale-NAME.svg and the section of
bench/README.md between `<!-- scale:start -->` and `<!-- scale:end -->`.
"""

import asyncio
import os
import signal
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
import conns  # noqa: E402
import plot  # noqa: E402
from lib import OUT, ROOT, TICK, children, cpu_ticks, free_port, median, wrk  # noqa: E402

QUICK = os.environ.get("BENCH_QUICK") == "1"
IDLE_STEPS = [500, 1000, 2000] if QUICK else [1000, 2500, 5000, 10_000]
CONC_STEPS = [1, 10, 100, 1000] if QUICK else [1, 10, 100, 1000, 10_000]
WORKER_STEPS = [1, 8, 32] if QUICK else [1, 8, 32, 128]
SCRAPE_WORKERS = {1, 32, 128}
WRK_SECONDS = 2 if QUICK else 5
IDLE_CPU_SECONDS = 3 if QUICK else 10
SCRAPES = 20
RELOAD_DEADLINE_S = 120


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def raise_nofile(need):
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 60_000) if hard != resource.RLIM_INFINITY else 60_000
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < need:
        sys.exit(f"the descriptor limit ({want}) is too low for {need} connections")


# ---- memory against idle connections ---------------------------------------

async def memory_steps(server):
    warm, _ = await conns.open_idle(server.port, conns.WARM)
    conns.close_all(warm)
    # As in conns.py: the warm-up's freed memory is given back first.
    await asyncio.sleep(conns.HOLD_S)
    before = conns.tree_rss_kib(server)
    held, failed, rows = [], 0, []
    for n in IDLE_STEPS:
        more, f = await conns.open_idle(server.port, n - len(held))
        held += more
        failed += f
        await asyncio.sleep(conns.HOLD_S)
        alive = sum(1 for r, _ in held if not r.at_eof())
        after = conns.tree_rss_kib(server)
        rows.append({"conns": n, "alive": alive, "failed": failed, "mib": after / 1024,
                     "per_conn_kib": (after - before) / max(len(held), 1)})
        log(f"memory {server.name} {n}: {rows[-1]}")
    conns.close_all(held)
    await asyncio.sleep(0.2)
    return rows


def memory_curve():
    out = {}
    for name, make in conns.SERVERS:
        with make(free_port()) as s:
            s.wait_ready("/")
            os.sched_setaffinity(0, {int(bench.LOAD_CPU)})
            out[name] = asyncio.run(memory_steps(s))
    return out


# ---- throughput against concurrent connections ------------------------------

def throughput_curve():
    makers = [("rsvisor demo", conns.rsvisor), ("hyper (1 process)", bench.hyper),
              ("nginx return 200", conns.nginx)]
    out = {}
    for name, make in makers:
        rows = []
        with make(free_port()) as s:
            s.wait_ready("/")
            for c in CONC_STEPS:
                r = wrk(s.url("/"), threads=1, conns=c, duration=WRK_SECONDS,
                        cpus=bench.LOAD_CPU, extra=("--timeout", "10s"))
                rows.append({"conns": c, "rps": r["rps"], "p99_ms": r["p99_ms"],
                             "errors": r["errors"]})
                log(f"throughput {name} {c}: {rows[-1]}")
        out[name] = rows
    return out


# ---- reloads, the idle master and /metrics against workers -------------------

def fleet(ctl):
    st = bench.control_status(ctl)
    return st["workers"]


def reload_ms(server, ctl, workers):
    """SIGHUP -> every worker a new pid and ready."""
    old = {w["pid"] for w in fleet(ctl)}
    t0 = time.monotonic()
    server.signal(signal.SIGHUP)
    while time.monotonic() - t0 < RELOAD_DEADLINE_S:
        ws = fleet(ctl)
        if (len(ws) == workers and all(w["state"] == "ready" for w in ws)
                and not ({w["pid"] for w in ws} & old)):
            return (time.monotonic() - t0) * 1000
        time.sleep(0.01)
    return None


def scrape_ms(url):
    times = []
    for _ in range(SCRAPES):
        t0 = time.monotonic()
        with urllib.request.urlopen(url, timeout=30) as r:
            r.read()
        times.append((time.monotonic() - t0) * 1000)
    return median(times)


def fleet_curve():
    rows = []
    for w in WORKER_STEPS:
        port = free_port()
        ctl = os.path.join(OUT, f"ctl-{port}.sock")
        with bench.rsvisor_demo(port, workers=w, name=f"scale-{w}") as s:
            s.wait_ready("/")
            deadline = time.monotonic() + RELOAD_DEADLINE_S
            while time.monotonic() < deadline:
                ws = fleet(ctl)
                if len(ws) == w and all(x["state"] == "ready" for x in ws):
                    break
                time.sleep(0.05)
            time.sleep(1)
            t0, c0 = time.monotonic(), cpu_ticks([s.pid])
            time.sleep(IDLE_CPU_SECONDS)
            idle_cpu = (cpu_ticks([s.pid]) - c0) / TICK / (time.monotonic() - t0) * 100
            scrape = scrape_ms(s.url("/metrics")) if w in SCRAPE_WORKERS else None
            reloads = [reload_ms(s, ctl, w) for _ in range(3)]
            row = {"workers": w, "reload_ms": median(reloads),
                   "reloads_done": sum(r is not None for r in reloads),
                   "idle_master_cpu_pct": idle_cpu, "scrape_ms": scrape,
                   "processes": 1 + len(children(s.pid))}
            rows.append(row)
            log(f"fleet {w}: {row}")
    return rows


# ---- report -----------------------------------------------------------------

def f(v, spec="{:,.1f}"):
    return "–" if v is None else spec.format(v)


def report(mem, thr, fl):
    day = time.strftime("%Y-%m-%d")
    lines = [
        "### 13. How the cost grows (`bench/run scale`)",
        "",
        f"Measured {day} on {bench.machine()}; servers on CPU 1, clients on CPU 0,",
        "loopback. Plots below (`bench/scale-memory.svg` and five more).",
        "",
        "**Memory against idle connections** (2 workers each; each connection "
        f"answered once and held {conns.HOLD_S:.0f} s; RSS of all server processes; "
        f"KiB per connection = growth over a {conns.WARM}-connection warm-up ÷ connections).",
        "",
        "| server | " + " | ".join(f"{n:,} conns MiB (KiB/conn)" for n in IDLE_STEPS) + " |",
        "|---|" + "---:|" * len(IDLE_STEPS),
    ]
    for name, rows in mem.items():
        cells = []
        for r in rows:
            lost = r["conns"] - r["alive"]
            cells.append(f"{r['mib']:.1f} ({r['per_conn_kib']:.2f})" + (f", {lost} closed" if lost else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"**Requests/s and p99 against concurrent keep-alive connections** (`wrk -t1 "
        f"-d{WRK_SECONDS}s`, hello world; rsvisor and nginx 2 workers, hyper one process).",
        "",
        "| server | " + " | ".join(f"{c:,} conns req/s (p99 ms)" for c in CONC_STEPS) + " | errors |",
        "|---|" + "---:|" * (len(CONC_STEPS) + 1),
    ]
    for name, rows in thr.items():
        cells = [f"{r['rps']:,.0f} ({f(r['p99_ms'], '{:.2f}')})" for r in rows]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {sum(r['errors'] for r in rows)} |")
    lines += [
        "",
        "**Reloads, the idle master and `/metrics` against workers** (rsvisor demo; reload = "
        "SIGHUP until every worker is a new pid and ready, read from the control socket every "
        f"10 ms, median of 3; idle master CPU over {IDLE_CPU_SECONDS} s; scrape = median of "
        f"{SCRAPES} GETs of `/metrics`).",
        "",
        "| workers | reload ms | idle master CPU % | `/metrics` scrape ms |",
        "|---:|---:|---:|---:|",
    ]
    for r in fl:
        lines.append(f"| {r['workers']} | {f(r['reload_ms'], '{:,.0f}')} | "
                     f"{r['idle_master_cpu_pct']:.2f} | {f(r['scrape_ms'], '{:.2f}')} |")
    lines += ["", "![memory](scale-memory.svg) ![throughput](scale-throughput.svg)",
              "![p99](scale-p99.svg) ![reload](scale-reload.svg)",
              "![master cpu](scale-master-cpu.svg) ![scrape](scale-scrape.svg)", ""]
    return "\n".join(lines)


def plots(mem, thr, fl):
    b = os.path.join(ROOT, "bench")
    plot.curve_svg("Memory of all server processes", "idle keep-alive connections", "MiB",
                   {n: [(r["conns"], r["mib"]) for r in rows] for n, rows in mem.items()},
                   os.path.join(b, "scale-memory.svg"))
    plot.curve_svg("Hello world throughput", "concurrent connections", "requests/s",
                   {n: [(r["conns"], r["rps"]) for r in rows] for n, rows in thr.items()},
                   os.path.join(b, "scale-throughput.svg"))
    plot.curve_svg("Hello world p99 latency", "concurrent connections", "ms",
                   {n: [(r["conns"], r["p99_ms"]) for r in rows] for n, rows in thr.items()},
                   os.path.join(b, "scale-p99.svg"))
    plot.curve_svg("Reload: SIGHUP to every worker new and ready", "workers", "ms",
                   {"rsvisor demo": [(r["workers"], r["reload_ms"]) for r in fl]},
                   os.path.join(b, "scale-reload.svg"))
    plot.curve_svg("CPU of the idle master", "workers", "% of a CPU",
                   {"rsvisor master": [(r["workers"], r["idle_master_cpu_pct"]) for r in fl]},
                   os.path.join(b, "scale-master-cpu.svg"))
    plot.curve_svg("/metrics scrape time", "workers", "ms",
                   {"rsvisor demo": [(r["workers"], r["scrape_ms"]) for r in fl]},
                   os.path.join(b, "scale-scrape.svg"))


def main():
    raise_nofile(max(IDLE_STEPS + CONC_STEPS) + 2000)
    mem = memory_curve()
    thr = throughput_curve()
    fl = fleet_curve()
    plots(mem, thr, fl)
    section = report(mem, thr, fl)
    with open(os.path.join(ROOT, "bench", "results-scale.md"), "w") as fh:
        fh.write(section)
    bench.update_readme(section, "scale")
    print(section)


if __name__ == "__main__":
    main()
