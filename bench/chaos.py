"""Chaos soak (bench/run chaos): mixed load on one rsvisor while a driver
breaks things, then one table of what every client saw.

Load, all on 127.0.0.1, every answer checked byte for byte:
  - HTTP/1.1 keep-alive (GET /pid, plain and TLS), HTTP/1.1 with a new
    connection per request (GET /), HTTP/2 with 4 streams in flight (h2c
    and TLS; streams a GOAWAY says were not processed are sent again);
  - uploads (POST /echo, 1 MiB) and slow readers (POST /echo of 2 MiB read
    at about 512 KB/s through a 16 KiB receive buffer);
  - WebSockets (echo; a close 1001 on drain is the documented goodbye and
    the client reconnects).
Driver, one action every 2-6 s: HUP (a canary reload), kill -9 of a worker,
USR2 (binary upgrade: the master changes), TTIN / TTOU (2 to 5 workers),
and about once a minute a canary reload of a release that answers 500 on /
(rolled back); the access log is on a 1 MiB tmpfs that fills within
seconds (when run as root; otherwise /dev/full).

A failed request is any error, reset, short or wrong body, or non-2xx,
except: the canary's 500s on / while a failing canary is being judged (its
documented budget), and requests on a connection whose worker the driver
killed with SIGKILL (no server can answer those; they are counted apart).

CHAOS_SECONDS (default 600) sets the length. Writes bench/results-chaos.md.
"""

import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib import ROOT, children, free_port  # noqa: E402

import h2.config  # noqa: E402
import h2.connection  # noqa: E402
import h2.events  # noqa: E402
import websockets.sync.client as wsc  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

DEMO = os.path.join(ROOT, "target/release/examples/demo")
DURATION = float(os.environ.get("CHAOS_SECONDS", "600"))
CANARY_SECONDS = 3
RESULTS = os.path.join(ROOT, "bench", "results-chaos.md")


class Tally:
    """What the clients saw, by client kind."""

    def __init__(self):
        self.lock = threading.Lock()
        self.ok = {}
        self.failed = {}
        self.killed = {}
        self.canary = {}
        self.retried = {}
        self.samples = []
        self.drained_ws = 0

    def add(self, table, kind, n=1):
        with self.lock:
            table[kind] = table.get(kind, 0) + n

    def fail(self, kind, what):
        with self.lock:
            self.failed[kind] = self.failed.get(kind, 0) + 1
            if len(self.samples) < 20 and sum(1 for x in self.samples if f" {kind}: " in x) < 4:
                self.samples.append(f"{time.strftime('%H:%M:%S')} {kind}: {what}")


class Chaos:
    def __init__(self, d, port, tls_port):
        self.dir = d
        self.port = port
        self.tls_port = tls_port
        self.config = os.path.join(d, "app.toml")
        self.tally = Tally()
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.kills = []  # (monotonic time, pid)
        self.canary_windows = []  # [start, end or None]
        self.actions = {}
        self.seen_workers = set()
        self.tls = ssl.create_default_context(cafile=os.path.join(d, "cert.pem"))

    # --- what the driver did, for the clients' accounting --------------

    def killed_pid(self, pid):
        with self.lock:
            return any(p == pid for _, p in self.kills)

    def kill_between(self, t0, t1):
        with self.lock:
            return any(t0 - 0.05 <= t <= t1 + 0.05 for t, _ in self.kills)

    def in_canary(self, t):
        with self.lock:
            return any(a <= t <= (b if b is not None else t) for a, b in self.canary_windows)

    def lost(self, kind, pid, t0, what):
        """A request that failed: with a killed worker, or a failure."""
        if (pid is not None and self.killed_pid(pid)) or (pid is None and self.kill_between(t0, time.monotonic())):
            self.tally.add(self.tally.killed, kind)
        else:
            self.tally.fail(kind, what)

    # --- the server -----------------------------------------------------

    def write_config(self, failing=False):
        env = 'env = { DEMO_FAIL_RATE = "1" }\n' if failing else ""
        text = f"""
[server]
bind = [{{ address = "127.0.0.1:{self.port}", tls = false }}, {{ address = "127.0.0.1:{self.tls_port}", tls = true }}]
workers = 3
pidfile = "{self.dir}/app.pid"
control_socket = "{self.dir}/ctl.sock"
[lifecycle]
graceful_timeout = 15
canary = {CANARY_SECONDS}
[tls]
cert = "{self.dir}/cert.pem"
key = "{self.dir}/key.pem"
[log]
access_log = "{self.access_log}"
[app]
{env}"""
        tmp = self.config + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.config)

    def master(self):
        try:
            with open(os.path.join(self.dir, "app.pid")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def status(self):
        r = subprocess.run([DEMO, "status", self.config, "--json"], capture_output=True, text=True, timeout=30)
        return json.loads(r.stdout) if r.returncode == 0 else None

    def wait_settled(self, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stop.is_set():
            st = self.status()
            if st and st.get("phase") == "running":
                ws = st["workers"]
                if len(ws) == st["desired_workers"] and all(
                        w["state"] == "ready" and w["generation"] == st["generation"] for w in ws):
                    return st
            time.sleep(0.2)
        return None

    # --- clients ----------------------------------------------------------

    def h1_keepalive(self, use_tls):
        kind = "HTTP/1.1 keep-alive" + (" TLS" if use_tls else "")
        conn, pid = None, None
        while not self.stop.is_set():
            if conn is None:
                if use_tls:
                    conn = http.client.HTTPSConnection("localhost", self.tls_port, context=self.tls, timeout=30)
                else:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                pid = None
            t0 = time.monotonic()
            try:
                conn.request("GET", "/pid")
                r = conn.getresponse()
                body = r.read()
                if r.status != 200 or not body.isdigit():
                    self.tally.fail(kind, f"{r.status} {body[:60]!r}")
                else:
                    pid = int(body)
                    self.tally.add(self.tally.ok, kind)
                if r.will_close:
                    conn.close()
                    conn = None
            except Exception as e:  # noqa: BLE001 - every failure counts
                self.lost(kind, pid, t0, repr(e))
                conn.close()
                conn = None

    def h1_close(self):
        kind = "HTTP/1.1 new connection each"
        while not self.stop.is_set():
            t0 = time.monotonic()
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                conn.request("GET", "/", headers={"Connection": "close"})
                r = conn.getresponse()
                body = r.read()
                if r.status == 200 and body == b"hello world":
                    self.tally.add(self.tally.ok, kind)
                elif r.status == 500 and self.in_canary(t0):
                    self.tally.add(self.tally.canary, kind)
                else:
                    self.tally.fail(kind, f"{r.status} {body[:60]!r}")
            except Exception as e:  # noqa: BLE001
                self.lost(kind, None, t0, repr(e))
            finally:
                conn.close()

    def uploads(self):
        kind = "upload 1 MiB"
        body = os.urandom(1 << 20)
        conn = None
        while not self.stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            t0 = time.monotonic()
            try:
                conn.request("POST", "/echo", body=body)
                r = conn.getresponse()
                got = r.read()
                if r.status == 200 and got == body:
                    self.tally.add(self.tally.ok, kind)
                else:
                    self.tally.fail(kind, f"{r.status}, {len(got)} bytes back")
                if r.will_close:
                    conn.close()
                    conn = None
            except Exception as e:  # noqa: BLE001
                self.lost(kind, None, t0, repr(e))
                conn.close()
                conn = None

    def slow_reader(self):
        kind = "slow reader 2 MiB"
        body = os.urandom(2 << 20)
        while not self.stop.is_set():
            t0 = time.monotonic()
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
            s.settimeout(60)
            try:
                s.connect(("127.0.0.1", self.port))
                s.sendall(b"POST /echo HTTP/1.1\r\nHost: chaos\r\nConnection: close\r\n"
                          + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
                got = bytearray()
                while True:
                    chunk = s.recv(16 * 1024)
                    if not chunk:
                        break
                    got += chunk
                    time.sleep(0.03)  # about 512 KB/s
                head, _, rest = bytes(got).partition(b"\r\n\r\n")
                if head.startswith(b"HTTP/1.1 200") and rest == body:
                    self.tally.add(self.tally.ok, kind)
                else:
                    self.tally.fail(kind, f"{head[:40]!r}, {len(rest)} of {len(body)} bytes")
            except Exception as e:  # noqa: BLE001
                self.lost(kind, None, t0, repr(e))
            finally:
                s.close()

    def websocket(self):
        kind = "WebSocket message"
        while not self.stop.is_set():
            pid, t0 = None, time.monotonic()
            try:
                with wsc.connect(f"ws://127.0.0.1:{self.port}/ws", open_timeout=30, close_timeout=5) as ws:
                    ws.send("pid")
                    pid = int(ws.recv(timeout=30))
                    i = 0
                    while not self.stop.is_set():
                        t0 = time.monotonic()
                        msg = f"m{i}"
                        ws.send(msg)
                        if ws.recv(timeout=30) != msg:
                            self.tally.fail(kind, "wrong echo")
                        else:
                            self.tally.add(self.tally.ok, kind)
                        i += 1
                        time.sleep(0.01)
            except ConnectionClosed as e:
                if e.rcvd is not None and e.rcvd.code == 1001:
                    with self.tally.lock:
                        self.tally.drained_ws += 1
                else:
                    self.lost(kind, pid, t0, repr(e))
            except Exception as e:  # noqa: BLE001
                self.lost(kind, pid, t0, repr(e))

    def h2(self, use_tls):
        """HTTP/2 with 4 streams in flight, as a browser or httpx would: a
        stream above a GOAWAY's last-stream-id was not processed and is
        sent again on a new connection (counted, not failed); any other
        stream must end with a 200 and the pid."""
        kind = "HTTP/2" + (" TLS" if use_tls else " (h2c)")
        while not self.stop.is_set():
            pending = {}  # stream id -> [start, status, body]
            pid = None
            try:
                sock = socket.create_connection(("127.0.0.1", self.tls_port if use_tls else self.port), timeout=30)
                if use_tls:
                    ctx = ssl.create_default_context(cafile=os.path.join(self.dir, "cert.pem"))
                    ctx.set_alpn_protocols(["h2"])
                    sock = ctx.wrap_socket(sock, server_hostname="localhost")
                conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
                read_after_goaway(conn)
                conn.initiate_connection()
                last = None
                while not (self.stop.is_set() and not pending) and not (last is not None and not pending):
                    while last is None and len(pending) < 4 and not self.stop.is_set():
                        sid = conn.get_next_available_stream_id()
                        conn.send_headers(sid, [(":method", "GET"), (":path", "/pid"),
                                                (":scheme", "https" if use_tls else "http"),
                                                (":authority", "localhost")], end_stream=True)
                        pending[sid] = [time.monotonic(), None, b""]
                    sock.sendall(conn.data_to_send())
                    data = sock.recv(65536)
                    if not data:
                        raise ConnectionError(f"closed with {len(pending)} streams open")
                    for ev in conn.receive_data(data):
                        if isinstance(ev, h2.events.ResponseReceived):
                            pending[ev.stream_id][1] = dict(ev.headers).get(b":status")
                        elif isinstance(ev, h2.events.DataReceived):
                            pending[ev.stream_id][2] += ev.data
                            conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                        elif isinstance(ev, h2.events.StreamEnded):
                            _, status, body = pending.pop(ev.stream_id)
                            if status == b"200" and body.isdigit():
                                pid = int(body)
                                self.tally.add(self.tally.ok, kind)
                            else:
                                self.tally.fail(kind, f"{status} {body[:60]!r}")
                        elif isinstance(ev, h2.events.StreamReset):
                            t0 = pending.pop(ev.stream_id)[0]
                            self.lost(kind, pid, t0, f"stream reset, code {ev.error_code}")
                        elif isinstance(ev, h2.events.ConnectionTerminated):
                            last = ev.last_stream_id if last is None else min(last, ev.last_stream_id)
                            for sid in [s for s in pending if s > last]:
                                del pending[sid]
                                self.tally.add(self.tally.retried, kind)
                    sock.sendall(conn.data_to_send())
                sock.close()
            except Exception as e:  # noqa: BLE001
                for t0, _, _ in pending.values():
                    self.lost(kind, pid, t0, repr(e))

    def watch_workers(self):
        while not self.stop.is_set():
            m = self.master()
            if m:
                self.seen_workers.update(children(m))
            time.sleep(0.25)

    # --- the driver -------------------------------------------------------

    def act(self, name, fn):
        fn()
        self.actions[name] = self.actions.get(name, 0) + 1

    def hup(self):
        os.kill(self.master(), signal.SIGHUP)
        time.sleep(0.5)
        self.wait_settled()

    def kill9(self):
        m = self.master()
        ws = [p for p in children(m) if p not in (m,)]
        st = self.status()
        ready = {w["pid"] for w in (st or {}).get("workers", []) if w["state"] == "ready"}
        victims = [p for p in ws if p in ready]
        if not victims:
            return
        pid = random.choice(victims)
        with self.lock:
            self.kills.append((time.monotonic(), pid))
        os.kill(pid, signal.SIGKILL)
        self.wait_settled()

    def usr2(self):
        old = self.master()
        os.kill(old, signal.SIGUSR2)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (self.master() in (None, old) or alive(old)):
            time.sleep(0.1)
        self.wait_settled()

    def scale(self, sig):
        st = self.status()
        n = len((st or {}).get("workers", []))
        if (sig == signal.SIGTTIN and n >= 5) or (sig == signal.SIGTTOU and n <= 2):
            sig = signal.SIGTTOU if sig == signal.SIGTTIN else signal.SIGTTIN
        os.kill(self.master(), sig)
        time.sleep(0.5)
        self.wait_settled()

    def failing_canary(self):
        self.write_config(failing=True)
        with self.lock:
            self.canary_windows.append([time.monotonic(), None])
        r = subprocess.run([DEMO, "reload", self.config], capture_output=True, text=True, timeout=120)
        time.sleep(1)  # answers already on their way
        with self.lock:
            self.canary_windows[-1][1] = time.monotonic()
        self.write_config()
        if r.returncode != 5:
            self.tally.fail("driver", f"the failing canary's reload exited {r.returncode}: {r.stderr[-200:]}")
        self.wait_settled()


def read_after_goaway(conn):
    """python-h2 takes a received GOAWAY for the end of the connection and
    refuses every later frame; RFC 9113 §6.8 lets the streams at or below
    its last-stream-id finish (and a server draining gracefully sends a
    PING between its two GOAWAYs). Their frames are read on."""
    sm = conn.state_machine
    process = sm.process_input

    def tolerant(event):
        if sm.state == h2.connection.ConnectionState.CLOSED:
            sm.state = h2.connection.ConnectionState.CLIENT_OPEN
        return process(event)

    sm.process_input = tolerant


def alive(pid):
    """Running (a zombie waiting for its parent does not count)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def proc_figures(pid):
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss, fds


def make_cert(d):
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", os.path.join(d, "key.pem"), "-out", os.path.join(d, "cert.pem")],
        check=True, capture_output=True)


def main():
    d = tempfile.mkdtemp(prefix="rsv-chaos-")
    make_cert(d)
    c = Chaos(d, free_port(), free_port())
    logdir = os.path.join(d, "logs")
    os.mkdir(logdir)
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", logdir], capture_output=True).returncode == 0
    c.access_log = os.path.join(logdir, "access.log") if mounted else "/dev/full"
    c.write_config()
    log = open(os.path.join(d, "rsvisor.log"), "w")
    proc = subprocess.Popen([DEMO, "serve", c.config], stdout=log, stderr=subprocess.STDOUT,
                            cwd=d, start_new_session=True)
    try:
        if not c.wait_settled(30):
            raise RuntimeError(f"rsvisor did not start: see {d}/rsvisor.log")
        first_master = c.master()
        threads = [threading.Thread(target=t, args=a, daemon=True) for t, a in [
            (c.h1_keepalive, (False,)), (c.h1_keepalive, (False,)), (c.h1_keepalive, (True,)),
            (c.h1_close, ()), (c.h1_close, ()), (c.uploads, ()), (c.slow_reader, ()),
            (c.websocket, ()), (c.websocket, ()), (c.h2, (False,)), (c.h2, (True,)),
            (c.watch_workers, ()),
        ]]
        for t in threads:
            t.start()
        time.sleep(5)
        cold_figures = proc_figures(first_master)
        # The master's first reload grows it once (the new configuration
        # and TLS material parsed; about 1 MiB here), later ones do not:
        # flatness is measured from after one reload.
        c.act("HUP (canary reload)", c.hup)
        start_figures = proc_figures(first_master)
        initial_workers = set(children(first_master))
        t_end = time.monotonic() + DURATION
        next_canary = time.monotonic() + 60
        rng = random.Random(int(os.environ.get("CHAOS_SEED", "1")))
        random.seed(rng.random())
        while time.monotonic() < t_end:
            time.sleep(rng.uniform(2, 6))
            if time.monotonic() >= next_canary:
                c.act("failing canary reload", c.failing_canary)
                next_canary = time.monotonic() + 60
                continue
            name, fn = rng.choice([
                ("HUP (canary reload)", c.hup),
                ("kill -9 of a worker", c.kill9),
                ("kill -9 of a worker", c.kill9),
                ("USR2", c.usr2),
                ("TTIN", lambda: c.scale(signal.SIGTTIN)),
                ("TTOU", lambda: c.scale(signal.SIGTTOU)),
            ])
            c.act(name, fn)
        c.wait_settled()
        end_master = c.master()
        end_figures = proc_figures(end_master)
        c.stop.set()
        for t in threads:
            t.join(timeout=90)
    finally:
        c.stop.set()
        m = c.master()
        for pid in {proc.pid, m} - {None}:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 30
        while m and alive(m) and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.poll()
        if mounted:
            subprocess.run(["umount", logdir], capture_output=True)

    t = c.tally
    kinds = sorted(set(t.ok) | set(t.failed) | set(t.killed) | set(t.canary))
    retried = ", ".join(f"{k} {n:,}" for k, n in sorted(t.retried.items())) or "none"
    rows = ["| client | answered | failed | lost with a killed worker | canary's 500s |",
            "|---|---:|---:|---:|---:|"]
    for k in kinds:
        rows.append(f"| {k} | {t.ok.get(k, 0):,} | {t.failed.get(k, 0):,} | {t.killed.get(k, 0):,} | {t.canary.get(k, 0):,} |")
    total = sum(t.ok.values())
    failed = sum(t.failed.values())
    rows.append(f"| **all** | **{total:,}** | **{failed:,}** | {sum(t.killed.values()):,} | {sum(t.canary.values()):,} |")
    acts = ", ".join(f"{n} × {a}" for a, n in sorted(c.actions.items()))
    rss_cold, fd_cold = cold_figures
    rss0, fd0 = start_figures
    rss1, fd1 = end_figures
    text = f"""# Chaos soak

Measured {time.strftime('%Y-%m-%d')} on this machine ({os.cpu_count()} CPUs), release build,
`bench/run chaos` with CHAOS_SECONDS={DURATION:.0f}: {DURATION / 60:.0f} minutes of mixed
load while the driver acted {sum(c.actions.values())} times: {acts}.
The access log was on {"a full 1 MiB tmpfs" if mounted else "/dev/full"}.

{chr(10).join(rows)}

WebSocket clients told to go (close 1001) by a draining worker, and
reconnected: {t.drained_ws:,}. HTTP/2 streams above a draining worker's
GOAWAY last-stream-id (not processed, sent again on a new connection, as
RFC 9113 §6.8 allows): {retried}. Worker processes started during the run:
{len(c.seen_workers - initial_workers):,}.

| master | RSS | descriptors |
|---|---:|---:|
| start (pid {first_master}, 5 s into the load) | {rss_cold:,} KiB | {fd_cold} |
| after its first reload | {rss0:,} KiB | {fd0} |
| end (pid {end_master}, after {c.actions.get("USR2", 0)} binary upgrades) | {rss1:,} KiB | {fd1} |

Change from after the first reload to the end: RSS {100 * (rss1 - rss0) / rss0:+.1f}%,
descriptors {fd1 - fd0:+d}. Target: 0 failed; master RSS and descriptors
within ±10% of the start (taken after the first reload, which grows a
master once).
"""
    if t.samples:
        text += "\nFirst failures:\n\n" + "\n".join(f"- {s}" for s in t.samples) + "\n"
    with open(RESULTS, "w") as f:
        f.write(text)
    print(text)
    shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
