"""Helpers for bench/run: start servers in their own process group, pin
them to CPUs, drive wrk, read /proc. Loopback only; every run is bounded."""

import os
import re
import signal
import socket
import statistics
import subprocess
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "bench", "out")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ncpu():
    return os.cpu_count() or 1


class Server:
    """A server command in a new process group, optionally pinned with taskset."""

    def __init__(self, name, cmd, port, cpus=None, env=None, cwd=None):
        self.name = name
        self.port = port
        full = list(cmd)
        if cpus is not None:
            full = ["taskset", "-c", cpus] + full
        e = dict(os.environ)
        e.update(env or {})
        os.makedirs(OUT, exist_ok=True)
        self.log_path = os.path.join(OUT, f"{name}.log")
        self.log = open(self.log_path, "w")
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            full, stdout=self.log, stderr=subprocess.STDOUT, env=e, cwd=cwd or ROOT,
            start_new_session=True,
        )

    @property
    def pid(self):
        return self.proc.pid

    def url(self, path="/"):
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_ready(self, path="/", timeout=30.0):
        """Seconds from start until the first 200 on `path`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: see {self.log_path}")
            try:
                with urllib.request.urlopen(self.url(path), timeout=1) as r:
                    if r.status == 200:
                        return time.monotonic() - self.t0
            except Exception:
                pass
            time.sleep(0.001)
        raise RuntimeError(f"{self.name} not ready after {timeout}s: see {self.log_path}")

    def tree(self):
        """The master (the process taskset exec'd into) and its descendants."""
        return [self.pid] + descendants(self.pid)

    def signal(self, sig):
        os.kill(self.pid, sig)

    def stop(self):
        try:
            os.killpg(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.pid, signal.SIGKILL)
            self.proc.wait()
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def nginx_server(name, port, prefix, http, cpus, main="", connections=4096):
    """nginx with 2 workers, its pid, logs and temp files under `prefix`,
    started in the foreground: `http` is the inside of its http block (the
    server blocks included), `main` extra top-level directives."""
    os.makedirs(os.path.join(prefix, "logs"), exist_ok=True)
    conf = os.path.join(prefix, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""
worker_processes 2;
{main}
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections {connections}; }}
http {{
    access_log off;
    client_body_temp_path {prefix}; proxy_temp_path {prefix};
    fastcgi_temp_path {prefix}; uwsgi_temp_path {prefix}; scgi_temp_path {prefix};
{http}
}}
""")
    return Server(name, ["nginx", "-c", conf, "-p", prefix, "-g", "daemon off;"], port, cpus=cpus)


def children(pid):
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        rest = stat[stat.rfind(")") + 2:].split()
        if int(rest[1]) == pid and rest[0] != "Z":
            out.append(int(name))
    return sorted(out)


def descendants(pid):
    out = []
    for c in children(pid):
        out.append(c)
        out.extend(descendants(c))
    return out


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_times(pids):
    """{pid: (command name, utime, stime)} of the given processes, in clock
    ticks; a process that is gone is left out."""
    out = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.find("(") + 1:stat.rfind(")")]
        rest = stat[stat.rfind(")") + 2:].split()
        out[pid] = (name, int(rest[11]), int(rest[12]))
    return out


def cpu_ticks(pids):
    """utime + stime of the given processes, in clock ticks."""
    return sum(u + s for _, u, s in cpu_times(pids).values())


TICK = os.sysconf("SC_CLK_TCK")

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text):
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    return float(m.group(1)) * _UNITS[m.group(2)] if m else None


def wrk(url, threads=1, conns=64, duration=10, cpus="0", script=None, extra=()):
    """Runs wrk and returns a dict: rps, p50_ms, p99_ms, requests, errors."""
    cmd = []
    if cpus is not None:
        cmd += ["taskset", "-c", cpus]
    cmd += ["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}s", "--latency"]
    if script:
        cmd += ["-s", script]
    cmd += list(extra) + [url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60).stdout
    res = {"raw": out, "rps": 0.0, "p50_ms": None, "p99_ms": None, "requests": 0, "errors": 0}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m:
        res["rps"] = float(m.group(1))
    m = re.search(r"(\d+) requests in", out)
    if m:
        res["requests"] = int(m.group(1))
    for pct, key in (("50%", "p50_ms"), ("99%", "p99_ms")):
        m = re.search(rf"^\s+{re.escape(pct)}\s+(\S+)", out, re.M)
        if m:
            res[key] = _ms(m.group(1))
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    res["errors"] = errors
    return res


def wrk_with_cpu(server, url, **kw):
    """wrk plus the server's CPU time per request (all its processes), and
    `cpu_by_name`: {command name: [user ticks, system ticks]} used during
    the run, to tell a hop's share from the app processes'."""
    pids = server.tree()
    before = cpu_times(pids)
    res = wrk(url, **kw)
    after = cpu_times(set(pids) | set(server.tree()))
    by_name = {}
    for pid, (name, u, s) in after.items():
        _, u0, s0 = before.get(pid, (name, 0, 0))
        used = by_name.setdefault(name, [0, 0])
        used[0] += u - u0
        used[1] += s - s0
    res["cpu_by_name"] = by_name
    used = sum(u + s for u, s in by_name.values()) / TICK
    res["cpu_us_per_req"] = used / res["requests"] * 1e6 if res["requests"] else None
    return res


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(v, spec="{:.0f}"):
    return "–" if v is None else spec.format(v)
