"""bench/run: every scenario of the benchmark, peers in the same run.

Throughput scenarios pin every server process to CPU 1 and the load
generator to CPU 0, and report the server's CPU time per request (utime +
stime of all its processes, from /proc), so that the numbers are about the
server, not about wrk. Writes bench/results.md and bench/reload.svg and
copies the table into bench/README.md. Loopback only; every step is bounded.
"""

import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from lib import (OUT, ROOT, Server, children, free_port, median, nginx_server, rss_kib,  # noqa: E402
                 wrk_with_cpu)
import plot  # noqa: E402

REL = os.path.join(ROOT, "target", "release")
DEMO = os.path.join(REL, "examples", "demo")
RSVISOR = os.path.join(REL, "rsvisor")
HYPER = os.path.join(REL, "examples", "hyper_baseline")
LOADGEN = os.path.join(REL, "examples", "loadgen")
VENV = os.path.join(ROOT, "bench", ".venv", "bin")
APPS = os.path.join(ROOT, "bench", "apps")
STATIC = os.path.join(OUT, "static")

QUICK = os.environ.get("BENCH_QUICK") == "1"
DURATION = 4 if QUICK else 8
ROUNDS = 1 if QUICK else 3
SERVER_CPU = "1"
LOAD_CPU = "0"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---- servers ---------------------------------------------------------------

def rsvisor_demo(port, workers=2, extra="", name="rsvisor", cpus=SERVER_CPU):
    cfg = os.path.join(OUT, f"{name}-{port}.toml")
    with open(cfg, "w") as f:
        f.write(
            f'[server]\nbind = ["127.0.0.1:{port}"]\nworkers = {workers}\n'
            f'control_socket = "{OUT}/ctl-{port}.sock"\n'
            f'[log]\naccess_log = ""\n{extra}'
        )
    return Server(name, [DEMO, "serve", cfg], port, cpus=cpus)


def rsvisor_static(port):
    cfg = os.path.join(OUT, f"static-{port}.toml")
    with open(cfg, "w") as f:
        f.write(
            f'[server]\nbind = ["127.0.0.1:{port}"]\nworkers = 2\n'
            f'[log]\naccess_log = ""\n[app]\nstatic_dir = "{STATIC}"\n'
        )
    return Server("rsvisor-static", [RSVISOR, "serve", cfg], port, cpus=SERVER_CPU)


def hyper(port):
    return Server("hyper", [HYPER, f"127.0.0.1:{port}"], port, cpus=SERVER_CPU)


def gunicorn(port, workers=2, extra=(), cpus=SERVER_CPU):
    return Server(
        "gunicorn",
        [os.path.join(VENV, "gunicorn"), "-w", str(workers), "-k", "uvicorn.workers.UvicornWorker",
         "-b", f"127.0.0.1:{port}", "--log-level", "warning", *extra, "asgi_hello:app"],
        port, cpus=cpus, cwd=APPS,
    )


def uvicorn(port):
    return Server(
        "uvicorn",
        [os.path.join(VENV, "uvicorn"), "--workers", "2", "--no-access-log", "--log-level", "warning",
         "--host", "127.0.0.1", "--port", str(port), "asgi_hello:app"],
        port, cpus=SERVER_CPU, cwd=APPS,
    )


def nginx(port):
    return nginx_server("nginx", port, os.path.join(OUT, f"nginx-{port}"), f"""
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 100000;
    open_file_cache max=1000 inactive=60s;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        location = / {{ default_type text/plain; return 200 "hello world"; }}
        location / {{ root {STATIC}; }}
    }}""", SERVER_CPU)


def footprint(server):
    master = rss_kib(server.pid)
    workers = [rss_kib(p) for p in children(server.pid)]
    return master, workers


# ---- load ------------------------------------------------------------------

def loadgen(url, conns, seconds, *flags):
    out = subprocess.run(
        ["taskset", "-c", LOAD_CPU, LOADGEN, url, str(conns), str(seconds), *flags],
        capture_output=True, text=True, timeout=seconds + 60,
    )
    return json.loads(out.stdout)


# ---- scenarios -------------------------------------------------------------

def hello():
    """1. hello world, pinned; 3 interleaved rounds, medians."""
    makers = [
        ("rsvisor demo", lambda p: rsvisor_demo(p)),
        ("hyper (1 process)", hyper),
        ("nginx return 200", nginx),
        ("gunicorn + UvicornWorker", lambda p: gunicorn(p)),
        ("uvicorn --workers 2", uvicorn),
    ]
    runs = {name: [] for name, _ in makers}
    rss = {}
    for rnd in range(ROUNDS):
        for name, make in makers:
            port = free_port()
            with make(port) as s:
                s.wait_ready("/")
                r = wrk_with_cpu(s, s.url("/"), threads=1, conns=64, duration=DURATION, cpus=LOAD_CPU)
                runs[name].append(r)
                if rnd == 0:
                    rss[name] = footprint(s)
            log(f"hello {name}: {r['rps']:.0f} req/s, p99 {r['p99_ms']} ms, {r['cpu_us_per_req']} µs CPU/req")
    rows = {}
    for name, rs in runs.items():
        rows[name] = {
            "rps": median(r["rps"] for r in rs),
            "p50": median(r["p50_ms"] for r in rs),
            "p99": median(r["p99_ms"] for r in rs),
            "errors": sum(r["errors"] for r in rs),
            "cpu": median(r["cpu_us_per_req"] for r in rs),
            "rss": rss.get(name),
        }
    return rows


def static_files():
    """2. static files, 4 KiB and 1 MiB: rsvisor's built-in app vs nginx."""
    rows = {}
    for size, fname in (("4 KiB", "4k.bin"), ("1 MiB", "1m.bin")):
        for name, make in (("rsvisor static", rsvisor_static), ("nginx static", nginx)):
            rs = []
            for _ in range(max(1, ROUNDS - 1)):
                port = free_port()
                with make(port) as s:
                    s.wait_ready(f"/{fname}")
                    rs.append(wrk_with_cpu(s, s.url(f"/{fname}"), threads=1, conns=64,
                                           duration=DURATION, cpus=LOAD_CPU))
            rows[(size, name)] = {
                "rps": median(r["rps"] for r in rs),
                "p50": median(r["p50_ms"] for r in rs),
                "p99": median(r["p99_ms"] for r in rs),
                "errors": sum(r["errors"] for r in rs),
                "cpu": median(r["cpu_us_per_req"] for r in rs),
            }
            log(f"static {size} {name}: {rows[(size, name)]['rps']:.0f} req/s")
    return rows


def new_connections():
    """3. a new connection per request (Connection: close)."""
    rows = {}
    for name, make in (
        ("rsvisor demo", lambda p: rsvisor_demo(p)),
        ("hyper (1 process)", hyper),
        ("nginx return 200", nginx),
        ("gunicorn + UvicornWorker", lambda p: gunicorn(p)),
    ):
        port = free_port()
        with make(port) as s:
            s.wait_ready("/")
            r = wrk_with_cpu(s, s.url("/"), threads=1, conns=64, duration=DURATION, cpus=LOAD_CPU,
                             extra=("-H", "Connection: close"))
        rows[name] = {"rps": r["rps"], "p50": r["p50_ms"], "p99": r["p99_ms"],
                      "errors": r["errors"], "cpu": r["cpu_us_per_req"]}
        log(f"close {name}: {r['rps']:.0f} req/s, errors {r['errors']}")
    return rows


def reload_under_load():
    """4. 5 HUPs during 20 s of load: per-second throughput and errors."""
    seconds = 12 if QUICK else 20
    hups = [seconds * (i + 1) / 6 for i in range(5)]
    out = {}
    for name, make in (("rsvisor", lambda p: rsvisor_demo(p)), ("gunicorn", lambda p: gunicorn(p))):
        port = free_port()
        with make(port) as s:
            s.wait_ready("/")
            proc = subprocess.Popen(
                ["taskset", "-c", LOAD_CPU, LOADGEN, s.url("/"), "32", str(seconds)],
                stdout=subprocess.PIPE, text=True,
            )
            t0 = time.monotonic()
            for at in hups:
                time.sleep(max(0.0, at - (time.monotonic() - t0)))
                s.signal(signal.SIGHUP)
            res = json.loads(proc.communicate(timeout=seconds + 60)[0])
            with open(s.log_path) as f:
                times = [int(l.split("elapsed_ms=")[1].split()[0]) for l in f if "reload complete" in l]
        res["hups"] = hups
        res["reload_ms"] = times
        out[name] = res
        log(f"reload {name}: {res['total_ok']} ok, {res['total_errors']} errors")
    return out


def recycling_under_load():
    """5. max_requests 200, jitter 50, under load."""
    seconds = 8 if QUICK else 15
    out = {}
    for name, make in (
        ("rsvisor", lambda p: rsvisor_demo(p, extra="[lifecycle]\nmax_requests = 200\nmax_requests_jitter = 50\n")),
        ("gunicorn", lambda p: gunicorn(p, extra=("--max-requests", "200", "--max-requests-jitter", "50"))),
    ):
        port = free_port()
        with make(port) as s:
            s.wait_ready("/")
            res = loadgen(s.url("/"), 32, seconds)
        out[name] = res
        log(f"recycling {name}: {res['total_ok']} ok, {res['total_errors']} errors")
    return out


def fairness():
    """6. requests served per worker (from /pid bodies)."""
    seconds = 5 if QUICK else 10
    out = {}
    for name, make in (("rsvisor", lambda p: rsvisor_demo(p)), ("gunicorn", lambda p: gunicorn(p))):
        port = free_port()
        with make(port) as s:
            s.wait_ready("/pid")
            res = loadgen(s.url("/pid"), 64, seconds, "--bodies")
        # Workers that answered nothing count as 0 (2 workers each).
        counts = sorted(list(res["bodies"].values()) + [0] * max(0, 2 - len(res["bodies"])))
        out[name] = {"counts": counts,
                     "ratio": counts[-1] / counts[0] if counts and counts[0] else float("inf")}
        log(f"fairness {name}: {counts}")
    return out


def start_time(make, path="/"):
    times = []
    for _ in range(3):
        port = free_port()
        s = make(port)
        try:
            times.append(s.wait_ready(path) * 1000)
        finally:
            s.stop()
    return median(times)


def rolling_reload_time(make, workers=9):
    port = free_port()
    with make(port) as s:
        s.wait_ready("/")
        deadline = time.monotonic() + 30
        while len(children(s.pid)) < workers and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.5)
        old = set(children(s.pid))
        t0 = time.monotonic()
        s.signal(signal.SIGHUP)
        while time.monotonic() - t0 < 60:
            now = set(children(s.pid))
            if len(now) == workers and not (now & old):
                return (time.monotonic() - t0) * 1000
            time.sleep(0.002)
    return None


def control_status(path):
    c = socket.socket(socket.AF_UNIX)
    c.connect(path)
    c.sendall(b"status\n")
    data = b""
    while not data.endswith(b"\n"):
        chunk = c.recv(65536)
        if not chunk:
            break
        data += chunk
    c.close()
    return json.loads(data)["status"]


def kill_to_ready():
    """kill -9 of a worker until its replacement reports ready (scoreboard)."""
    times = []
    port = free_port()
    with rsvisor_demo(port, cpus=None) as s:
        s.wait_ready("/")
        ctl = os.path.join(OUT, f"ctl-{port}.sock")
        for _ in range(5):
            time.sleep(0.3)
            st = control_status(ctl)
            victim = st["workers"][0]["pid"]
            t0 = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            while time.monotonic() - t0 < 5:
                st = control_status(ctl)
                ready = [w for w in st["workers"] if w["state"] == "ready" and w["pid"] != victim]
                if len(ready) == 2:
                    times.append((time.monotonic() - t0) * 1000)
                    break
                time.sleep(0.0005)
    return median(times)


def footprint_and_start(hello_rows):
    log("footprint and start")
    out = {
        "start_ms": {
            "rsvisor demo": start_time(lambda p: rsvisor_demo(p, cpus=None)),
            "gunicorn + UvicornWorker": start_time(lambda p: gunicorn(p, cpus=None)),
            "nginx": start_time(nginx),
        },
        "reload9_ms": {
            "rsvisor demo": rolling_reload_time(lambda p: rsvisor_demo(p, workers=9, cpus=None)),
            "gunicorn + UvicornWorker": rolling_reload_time(lambda p: gunicorn(p, workers=9, cpus=None)),
        },
        "kill_to_ready_ms": kill_to_ready(),
        "rss": {k: v["rss"] for k, v in hello_rows.items()},
    }
    return out


# ---- report ----------------------------------------------------------------

def machine():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, Linux {platform.release()}"


def versions():
    def first(cmd):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (out.stdout + out.stderr).strip().splitlines()[0]
        except Exception:
            return "?"
    return {
        "rsvisor": first([RSVISOR, "--version"]),
        "gunicorn": first([os.path.join(VENV, "gunicorn"), "--version"]),
        "uvicorn": first([os.path.join(VENV, "uvicorn"), "--version"]),
        "nginx": first(["nginx", "-v"]),
        "wrk": first(["wrk", "-v"]),
    }


def f0(v):
    return "–" if v is None else f"{v:,.0f}"


def f2(v):
    if v == float("inf"):
        return "∞"
    return "–" if v is None else f"{v:.2f}"


def mib(kib):
    return f"{kib / 1024:.1f}"



def report(h, st, cl, rl, rc, fa, fp):
    lines = []
    w = lines.append
    w(f"Measured {time.strftime('%Y-%m-%d')} on {machine()}.  ")
    v = versions()
    w("Versions: " + ", ".join(f"{k} `{val}`" for k, val in v.items()) + ".  ")
    w(f"Servers pinned to CPU {SERVER_CPU} (all their processes), wrk and the load generator to CPU "
      f"{LOAD_CPU}; `wrk -t1 -c64 -d{DURATION}s`, median of {ROUNDS} interleaved rounds. "
      "CPU per request = utime + stime of all the server's processes over the run / requests.")
    w("")
    w("### 1. Hello world (keep-alive)")
    w("")
    w("| server (2 workers) | req/s | × rsvisor | p50 ms | p99 ms | errors | CPU µs/req | master RSS MiB | worker RSS MiB |")
    w("|---|---|---|---|---|---|---|---|---|")
    base = h["rsvisor demo"]["rps"]
    for name, r in h.items():
        m, ws = r["rss"] or (0, [])
        w(f"| {name} | {f0(r['rps'])} | {r['rps'] / base:.2f} | {f2(r['p50'])} | {f2(r['p99'])} | {r['errors']} | "
          f"{f2(r['cpu'])} | {mib(m)} | {', '.join(mib(x) for x in ws) or '–'} |")
    w("")
    w("### 2. Static files")
    w("")
    w("| file | server | req/s | p99 ms | errors | CPU µs/req |")
    w("|---|---|---|---|---|---|")
    for (size, name), r in st.items():
        w(f"| {size} | {name} | {f0(r['rps'])} | {f2(r['p99'])} | {r['errors']} | {f2(r['cpu'])} |")
    w("")
    w("### 3. A new connection per request (`Connection: close`)")
    w("")
    w("| server | req/s | p99 ms | errors | CPU µs/req |")
    w("|---|---|---|---|---|")
    for name, r in cl.items():
        w(f"| {name} | {f0(r['rps'])} | {f2(r['p99'])} | {r['errors']} | {f2(r['cpu'])} |")
    w("")
    w("### 4–6. Reloads, recycling, fairness (load generator that never retries, 32–64 connections)")
    w("")
    w("| scenario | rsvisor | gunicorn + UvicornWorker |")
    w("|---|---|---|")
    w(f"| 5 HUPs under load: requests / failed | {rl['rsvisor']['total_ok']:,} / **{rl['rsvisor']['total_errors']}** | "
      f"{rl['gunicorn']['total_ok']:,} / **{rl['gunicorn']['total_errors']}** |")
    w(f"| rsvisor reload durations (HUP → new generation serving), ms | {', '.join(map(str, rl['rsvisor']['reload_ms']))} | – |")
    w(f"| max_requests 200 ± 50 under load: requests / failed | {rc['rsvisor']['total_ok']:,} / **{rc['rsvisor']['total_errors']}** | "
      f"{rc['gunicorn']['total_ok']:,} / **{rc['gunicorn']['total_errors']}** |")
    w(f"| requests per worker (max/min) | {fa['rsvisor']['counts']} ({f2(fa['rsvisor']['ratio'])}) | "
      f"{fa['gunicorn']['counts']} ({f2(fa['gunicorn']['ratio'])}) |")
    w("")
    w("![requests/s and errors per second during 5 reloads under load](reload.svg)")
    w("")
    w("### 7. Footprint and start")
    w("")
    w("| measure | rsvisor | gunicorn + UvicornWorker | nginx |")
    w("|---|---|---|---|")
    s = fp["start_ms"]
    w(f"| exec → first 200, ms | {f0(s['rsvisor demo'])} | {f0(s['gunicorn + UvicornWorker'])} | {f0(s['nginx'])} |")
    r9 = fp["reload9_ms"]
    w(f"| rolling reload of 9 workers (all pids new), ms | {f0(r9['rsvisor demo'])} | {f0(r9['gunicorn + UvicornWorker'])} | – |")
    w(f"| kill -9 of a worker → replacement ready, ms | {f2(fp['kill_to_ready_ms'])} | – | – |")
    w("")
    # Targets.
    hy = h["hyper (1 process)"]
    ng = h["nginx return 200"]
    gu = h["gunicorn + UvicornWorker"]
    rs = h["rsvisor demo"]
    m_rss, w_rss = rs["rss"]
    st4 = st[("4 KiB", "rsvisor static")]["rps"] / st[("4 KiB", "nginx static")]["rps"]
    ratios = [
        ("hello world req/s ÷ hyper's", rs["rps"] / hy["rps"]),
        ("hello world req/s ÷ nginx `return 200`'s", rs["rps"] / ng["rps"]),
        ("hello world req/s ÷ gunicorn + UvicornWorker's", rs["rps"] / gu["rps"]),
        ("CPU per request ÷ hyper's", rs["cpu"] / hy["cpu"]),
        ("p99 ÷ hyper's", rs["p99"] / hy["p99"]),
        ("static 4 KiB req/s ÷ nginx's", st4),
        ("failed requests over 5 reloads under load", rl["rsvisor"]["total_errors"]),
        ("failed requests while recycling under load", rc["rsvisor"]["total_errors"]),
        ("requests per worker, max ÷ min", fa["rsvisor"]["ratio"]),
        ("master RSS, MiB", m_rss / 1024),
        ("largest worker RSS, MiB", max(w_rss or [0]) / 1024),
        ("exec → first 200, ms", s["rsvisor demo"]),
        ("kill -9 → replacement ready, ms", fp["kill_to_ready_ms"]),
    ]
    w("### Summary: rsvisor against its peers in this run")
    w("")
    w("| measure | rsvisor |")
    w("|---|---|")
    for name, val in ratios:
        w(f"| {name} | {f2(val) if isinstance(val, float) else val} |")
    return "\n".join(lines) + "\n"


def update_readme(table, marker="bench"):
    """Replaces bench/README.md's text between `<!-- MARKER:start -->` and
    `<!-- MARKER:end -->` (added at the end when missing)."""
    path = os.path.join(ROOT, "bench", "README.md")
    with open(path) as f:
        text = f.read()
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    if start not in text or end not in text:
        text = text.rstrip("\n") + f"\n\n{start}\n{end}\n"
    before, rest = text.split(start, 1)
    after = rest.split(end, 1)[1]
    with open(path, "w") as f:
        f.write(before + start + "\n" + table + end + after)


def prepare_static():
    os.makedirs(STATIC, exist_ok=True)
    for name, size in (("4k.bin", 4096), ("1m.bin", 1 << 20)):
        p = os.path.join(STATIC, name)
        if not os.path.exists(p) or os.path.getsize(p) != size:
            with open(p, "wb") as f:
                f.write(os.urandom(size))
        os.chmod(p, 0o644)
    os.chmod(STATIC, 0o755)


def main():
    os.makedirs(OUT, exist_ok=True)
    prepare_static()
    t0 = time.monotonic()
    h = hello()
    st = static_files()
    cl = new_connections()
    rl = reload_under_load()
    rc = recycling_under_load()
    fa = fairness()
    fp = footprint_and_start(h)
    table = report(h, st, cl, rl, rc, fa, fp)
    with open(os.path.join(ROOT, "bench", "results.md"), "w") as f:
        f.write("# Benchmark results\n\nProduced by `bench/run`.\n\n" + table)
    plot.reload_svg(rl, os.path.join(ROOT, "bench", "reload.svg"))
    update_readme(table)
    with open(os.path.join(OUT, "raw.json"), "w") as f:
        json.dump({"hello": h, "reload": rl, "recycling": rc, "fairness": fa,
                   "footprint": fp, "close": cl,
                   "static": {f"{k[0]} {k[1]}": v for k, v in st.items()}}, f, indent=1, default=str)
    print(table)
    log(f"bench finished in {time.monotonic() - t0:.0f} s")


if __name__ == "__main__":
    main()
