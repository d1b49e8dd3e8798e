"""An exec-mode worker that speaks the systemd notify protocol with the
standard library only: it serves HTTP on the inherited socket (fd 3),
sends READY=1 once it listens, then WATCHDOG=1 every second, until a
request for /hang makes it stop pinging (its event loop still runs).

    GET /      -> its pid
    GET /hang  -> 200, and no more WATCHDOG=1

NOTIFY_APP_EXIT_AFTER_READY_MS: exit (status 1) that long after READY=1,
as an app that crashes right after it said it was ready.

NOTIFY_APP_STRAY: start a child that ignores SIGTERM and serves the same
socket (answering with its own pid), as apps that fork helpers do:
"group" keeps it in the worker's process group, "setsid" moves it to a
session of its own. It prints "stray <pid>" first.

NOTIFY_APP_ORPHANS: before serving, leave that many orphans behind
(double-forked processes that exit 0.2 s later): whoever adopts them must
reap them. It prints "orphans <pid> <pid>…".

NOTIFY_APP_FLOOD_LINES: after READY=1, print a line with a bare carriage
return ("evil\\rFORGED slot=7"), then that many lines "flood line N" as
fast as it can, then "flood done".
"""

import http.server
import os
import signal
import sys
import socket
import socketserver
import threading
import time

pinging = threading.Event()
pinging.set()


def notify(message):
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(path)
        s.sendall(message.encode())


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path == "/hang":
            pinging.clear()
        body = str(os.getpid()).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True

    def __init__(self):
        socketserver.BaseServer.__init__(self, None, Handler)
        self.socket = socket.socket(fileno=3)

    def server_bind(self):
        pass

    def server_activate(self):
        pass


def watchdog():
    interval = int(os.environ.get("WATCHDOG_USEC", "2000000")) / 2e6
    while True:
        if pinging.is_set():
            notify("WATCHDOG=1")
        time.sleep(min(interval, 1.0))


def start_stray(how):
    """Forks (before any thread starts) a TERM-ignoring child that serves."""
    pid = os.fork()
    if pid:
        print(f"stray {pid}", flush=True)
        return
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if how == "setsid":
        os.setsid()
    Server().serve_forever()
    os._exit(0)


def leave_orphans(n):
    pids = []
    for _ in range(n):
        r, w = os.pipe()
        if os.fork() == 0:
            os.close(r)
            grandchild = os.fork()
            if grandchild == 0:
                os.close(w)
                time.sleep(0.2)
                os._exit(0)
            os.write(w, str(grandchild).encode())
            os._exit(0)
        os.close(w)
        pids.append(os.read(r, 32).decode())
        os.close(r)
        os.wait()
    print("orphans " + " ".join(pids), flush=True)


def main():
    assert os.environ["LISTEN_FDS"] == "1"
    orphans = os.environ.get("NOTIFY_APP_ORPHANS")
    if orphans:
        leave_orphans(int(orphans))
    assert os.environ["LISTEN_PID"] == str(os.getpid())
    stray = os.environ.get("NOTIFY_APP_STRAY")
    if stray:
        start_stray(stray)
    server = Server()
    print(f"notify_app {os.getpid()} serving slot {os.environ['RSVISOR_WORKER_SLOT']}", flush=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    threading.Thread(target=watchdog, daemon=True).start()
    # NOTIFY_APP_READY_DELAY_MS: serve, but say READY=1 only later.
    time.sleep(int(os.environ.get("NOTIFY_APP_READY_DELAY_MS", "0")) / 1000)
    notify("READY=1")
    flood = os.environ.get("NOTIFY_APP_FLOOD_LINES")
    if flood is not None:
        print("evil\rFORGED slot=7", flush=True)
        sys.stdout.write("".join(f"flood line {i}\n" for i in range(int(flood))))
        print("flood done", flush=True)
    exit_after = os.environ.get("NOTIFY_APP_EXIT_AFTER_READY_MS")
    if exit_after is not None:
        time.sleep(int(exit_after) / 1000)
        os._exit(1)
    threading.Event().wait()


if __name__ == "__main__":
    main()
