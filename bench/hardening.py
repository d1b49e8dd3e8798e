"""Measurements for the hardening work (release binaries, loopback only):

- supervision latency: kill -9 of a worker -> replacement ready, with 0,
  20 and 200 idle control-socket connections open;
- worker RSS before, during and after 200 slow readers of a 100 MB file
  and an HTTP/2 client that never opens its flow-control window.

Run: bench/.venv/bin/python bench/hardening.py (needs the `h2` package in
the venv: bench/.venv/bin/pip install h2). Prints a Markdown table.
"""

import os
import signal
import socket
import statistics
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib import ROOT, Server, free_port  # noqa: E402

DEMO = os.path.join(ROOT, "target/release/examples/demo")
RSVISOR = os.path.join(ROOT, "target/release/rsvisor")


def start(name, bin_, config_text, port):
    d = tempfile.mkdtemp(prefix="rsv-hard-")
    path = os.path.join(d, "app.toml")
    with open(path, "w") as f:
        f.write(config_text.replace("{dir}", d))
    s = Server(name, [bin_, "serve", path], port)
    s.wait_ready("/health")
    return s, d


def metrics(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def sample(text, name):
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def children(pid):
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                st = f.read()
            ppid = int(st[st.rfind(")") + 2:].split()[1])
            if ppid == pid:
                out.append(int(p))
        except OSError:
            pass
    return sorted(out)


def rss(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def workers_rss(s):
    return sum(rss(p) for p in children(s.pid))


def supervision(idle, rounds=10):
    port = free_port()
    s, d = start("hard-sup", DEMO, f"""
[server]
bind = ["127.0.0.1:{port}"]
workers = 2
control_socket = "{{dir}}/ctl.sock"
[log]
access_log = ""
""", port)
    socks = []
    for _ in range(idle):
        c = socket.socket(socket.AF_UNIX)
        c.connect(os.path.join(d, "ctl.sock"))
        socks.append(c)
    time.sleep(0.3)
    took = []
    for _ in range(rounds):
        before = children(s.pid)
        while len(before) != 2:
            time.sleep(0.01)
            before = children(s.pid)
        os.kill(before[0], signal.SIGKILL)
        t0 = time.monotonic()
        while True:
            now = children(s.pid)
            if len(now) == 2 and before[0] not in now:
                m = metrics(port)
                if sample(m, 'rsvisor_workers{state="ready"}') == 2:
                    break
            time.sleep(0.0005)
        took.append((time.monotonic() - t0) * 1000)
    for c in socks:
        c.close()
    s.stop()
    return statistics.median(took), max(took)


def slow_readers():
    port = free_port()
    d = tempfile.mkdtemp(prefix="rsv-www-")
    with open(os.path.join(d, "big.bin"), "wb") as f:
        f.truncate(100 * 1024 * 1024)
    s, _ = start("hard-slow", RSVISOR, f"""
[server]
bind = ["127.0.0.1:{port}"]
workers = 2
[http]
send_timeout = 3
[app]
static_dir = "{d}"
[log]
access_log = ""
""", port)
    time.sleep(1)
    before = workers_rss(s)
    conns = []
    for _ in range(200):
        c = socket.create_connection(("127.0.0.1", port))
        c.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        conns.append(c)
    time.sleep(1.5)
    during = workers_rss(s)
    t0 = time.monotonic()
    while sample(metrics(port), "rsvisor_http_send_timeouts_total") < 200:
        time.sleep(0.1)
    closed_after = time.monotonic() - t0 + 1.5
    time.sleep(6)
    after = workers_rss(s)
    for c in conns:
        c.close()
    s.stop()
    return before, during, after, closed_after


def zero_window():
    import h2.config
    import h2.connection
    import h2.events
    import h2.settings

    port = free_port()
    s, _ = start("hard-h2", DEMO, f"""
[server]
bind = ["127.0.0.1:{port}"]
workers = 1
[http]
send_timeout = 3
[log]
access_log = ""
""", port)
    time.sleep(1)
    before = workers_rss(s)
    body = b"z" * (5 * 1024 * 1024)
    conns = []
    for _ in range(4):
        sock = socket.create_connection(("127.0.0.1", port))
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
        sock.sendall(conn.data_to_send())
        pending = {}
        for _ in range(10):
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, [(":method", "POST"), (":path", "/echo"),
                                    (":scheme", "http"), (":authority", "x")])
            pending[sid] = 0
        conns.append((sock, conn, pending))
    # Upload every body (answering PINGs and window updates), never read.
    deadline = time.monotonic() + 60
    resets = 0
    while time.monotonic() < deadline and any(p for _, _, p in conns):
        for sock, conn, pending in conns:
            for sid in list(pending):
                sent = pending[sid]
                room = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size,
                           len(body) - sent)
                while room > 0:
                    conn.send_data(sid, body[sent:sent + room])
                    sent += room
                    room = min(conn.local_flow_control_window(sid),
                               conn.max_outbound_frame_size, len(body) - sent)
                pending[sid] = sent
                if sent == len(body):
                    conn.end_stream(sid)
                    del pending[sid]
            sock.sendall(conn.data_to_send())
            sock.settimeout(0.05)
            try:
                data = sock.recv(65536)
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.StreamReset):
                        resets += 1
            except socket.timeout:
                pass
            sock.sendall(conn.data_to_send())
    time.sleep(1.5)
    during = workers_rss(s)
    t0 = time.monotonic()
    while resets < 40 and time.monotonic() - t0 < 15:
        for sock, conn, _ in conns:
            sock.settimeout(0.05)
            try:
                data = sock.recv(65536)
                if not data:
                    continue
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.StreamReset):
                        resets += 1
                sock.sendall(conn.data_to_send())
            except (socket.timeout, OSError):
                pass
    reset_after = time.monotonic() - t0 + 1.5
    time.sleep(6)
    after = workers_rss(s)
    for sock, _, _ in conns:
        sock.close()
    s.stop()
    return before, during, after, reset_after, resets


def mib(b):
    return f"{b / 1048576:.1f}"


def main():
    print("| idle control connections | kill -9 → replacement ready, median ms | max ms |")
    print("|---|---|---|")
    for idle in (0, 20, 200):
        med, mx = supervision(idle)
        print(f"| {idle} | {med:.1f} | {mx:.1f} |")
    print()
    print("| attack | worker RSS before MiB | during MiB | after MiB | closed/reset after s |")
    print("|---|---|---|---|---|")
    b, du, a, t = slow_readers()
    print(f"| 200 slow readers of a 100 MB file (2 workers, send_timeout 3 s) | {mib(b)} | "
          f"{mib(du)} | {mib(a)} | {t:.1f} |")
    try:
        b, du, a, t, n = zero_window()
        print(f"| HTTP/2 zero window, 4 conns × 10 streams × 5 MB echo (1 worker, send_timeout 3 s)"
              f" | {mib(b)} | {mib(du)} | {mib(a)} | {t:.1f} ({n} resets) |")
    except ImportError:
        print("| HTTP/2 zero window | (install h2 in bench/.venv) | | | |")


if __name__ == "__main__":
    main()
