"""User-space instructions per request, counted by callgrind (deterministic:
the same binary and inputs give the same count, whatever else the machine
does). The server runs with one worker under valgrind; a client sends N1,
then (in a second run) N2 keep-alive requests on one connection; the
difference of the worker's instruction totals divided by N2 - N1 is the
cost of one request, without start-up and shutdown.

    python3 bench/callgrind.py [NAME ...]     (default: every server below)

Servers: demo, static (the rsvisor binary, a 4 KiB file), hyper (one
process), axum (the axum example under rsvisor), proxy (proxy mode's front
worker, in front of one uvicorn process that is not counted: it needs
bench/.venv; its counts vary by a few hundred instructions from run to
run, since the app process answers on its own schedule), nginx_proxy (the
same hop in nginx: one nginx process, not a master and workers, in front
of one uvicorn process, sent the same fields; HTTP/1.1 only); each over
HTTP/1.1, and
h2 variants (prior-knowledge HTTP/2, one connection) where the server
speaks it. Prints a Markdown table; `--json` prints JSON.
"""

import glob
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib import ROOT, free_port  # noqa: E402

REL = os.path.join(ROOT, "target", "release")
N1, N2 = 2000, 12000


def config(port, extra=""):
    d = tempfile.mkdtemp(prefix="rsv-cg-")
    path = os.path.join(d, "app.toml")
    with open(path, "w") as f:
        f.write(f"""[server]
bind = ["127.0.0.1:{port}"]
workers = 1
[log]
access_log = ""
{extra}""")
    return d, path


def static_dir():
    d = tempfile.mkdtemp(prefix="rsv-cg-www-")
    with open(os.path.join(d, "file4k.txt"), "wb") as f:
        f.write(b"x" * 4096)
    return d


def servers():
    www = static_dir()
    return {
        "demo": (lambda port: [os.path.join(REL, "examples", "demo"), "serve",
                               config(port)[1]], "/", True),
        "static": (lambda port: [os.path.join(REL, "rsvisor"), "serve",
                                 config(port, f'[app]\nstatic_dir = "{www}"\n')[1]],
                   "/file4k.txt", True),
        "hyper": (lambda port: [os.path.join(REL, "examples", "hyper_baseline"),
                                f"127.0.0.1:{port}"], "/", False),
        "axum": (lambda port: [os.path.join(REL, "examples", "axum_hello"), "serve",
                               config(port)[1]], "/", True),
        "axum_plain": (lambda port: [os.path.join(REL, "examples", "axum_plain"),
                                     f"127.0.0.1:{port}"], "/", False),
        # Proxy mode: one front worker (counted) in front of one uvicorn
        # process (exec'd, so not under valgrind).
        "proxy": (lambda port: [os.path.join(REL, "rsvisor"), "serve", proxy_config(port)],
                  "/", True),
        # The same hop in nginx (one process, counted) in front of one
        # uvicorn process (started beside it, not counted), sent the same
        # fields as proxy mode's front sends.
        "nginx_proxy": (nginx_proxy, "/", False),
    }


APPS = os.path.join(ROOT, "bench", "apps")
UVICORN = os.path.join(ROOT, "bench", ".venv", "bin", "uvicorn")
# Processes a server needs beside it (not counted), stopped after it.
COMPANIONS = []
# Servers measured over HTTP/1.1 only (nginx speaks HTTP/2 without TLS
# only on a port that speaks nothing else).
H1_ONLY = ("nginx_proxy",)
UVICORN_ARGS = ["--no-access-log", "--log-level", "warning", "asgi_hello:app"]


def nginx_proxy(port):
    """nginx's command line; its app process is started here and stopped
    by run_once, with nginx."""
    d = tempfile.mkdtemp(prefix="rsv-cg-nginx-")
    sock = os.path.join(d, "app.sock")
    app = subprocess.Popen([UVICORN, "--uds", sock] + UVICORN_ARGS, cwd=APPS,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not os.path.exists(sock):
        if time.monotonic() > deadline or app.poll() is not None:
            app.kill()
            app.wait()
            raise RuntimeError("uvicorn never made its socket (is bench/.venv installed?)")
        time.sleep(0.1)
    COMPANIONS.append(app)
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {d}; proxy_temp_path {d};
    fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};
    upstream app {{ server unix:{sock}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
        }}
    }}
}}
""")
    return ["nginx", "-c", conf, "-p", d, "-g", "daemon off; master_process off;"]


def proxy_config(port):
    command = json.dumps([UVICORN, "--uds", "{socket}"] + UVICORN_ARGS)
    return config(port, f"""[app]
mode = "proxy"
front_workers = 1
cwd = "{APPS}"
command = {command}
""")[1]


def http1_requests(port, path, n):
    s = socket.create_connection(("127.0.0.1", port))
    req = f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    for _ in range(n):
        s.sendall(req)
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += s.recv(65536)
        head, _, rest = buf.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        while len(rest) < length:
            rest += s.recv(65536)
    s.close()


def h2_requests(port, path, n):
    subprocess.run(["h2load", "-n", str(n), "-c", "1", "-m", "1",
                    f"http://127.0.0.1:{port}{path}"],
                   check=True, capture_output=True, timeout=600)


def wait_port(port, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"port {port} never opened")


def run_once(cmd_of, path, n, h2, supervised):
    port = free_port()
    outdir = tempfile.mkdtemp(prefix="rsv-cg-out-")
    cmd = ["valgrind", "--tool=callgrind", "--trace-children=no",
           f"--callgrind-out-file={outdir}/callgrind.out.%p"] + cmd_of(port)
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    try:
        wait_port(port)
        # Warm up (allocator, caches), then the measured requests.
        http1_requests(port, path, 200)
        (h2_requests if h2 else http1_requests)(port, path, n)
    finally:
        os.killpg(p.pid, 15)
        p.wait(timeout=120)
        while COMPANIONS:
            c = COMPANIONS.pop()
            c.terminate()
            c.wait(timeout=60)
    files = glob.glob(os.path.join(outdir, "callgrind.out.*"))
    totals = {}
    for f in files:
        with open(f) as fh:
            for line in fh:
                if line.startswith("totals:") or line.startswith("summary:"):
                    totals[f] = int(line.split()[1])
                    break
    if not totals:
        raise RuntimeError(f"no callgrind output in {outdir}")
    # The worker did the serving: the biggest count (the master, under
    # supervision, runs its loop only).
    return max(totals.values()) if supervised else sum(totals.values())


def measure(name, h2=False):
    cmd_of, path, supervised = servers()[name]
    a = run_once(cmd_of, path, N1, h2, supervised)
    b = run_once(cmd_of, path, N2, h2, supervised)
    return (b - a) / (N2 - N1)


def main():
    names = [a for a in sys.argv[1:] if not a.startswith("--")] or ["demo", "static", "hyper", "axum"]
    rows = []
    for name in names:
        h1 = measure(name)
        h2 = None if name in H1_ONLY else measure(name, h2=True)
        rows.append((name, h1, h2))
    if "--json" in sys.argv:
        print(json.dumps({n: {"h1": a, "h2": b} for n, a, b in rows}))
        return
    print("| server (1 worker) | instructions/request HTTP/1.1 | HTTP/2 |")
    print("|---|---|---|")
    for n, a, b in rows:
        print(f"| {n} | {a:,.0f} | {'–' if b is None else f'{b:,.0f}'} |")


if __name__ == "__main__":
    main()
