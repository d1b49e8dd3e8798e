"""The HTTP edge: demo `/` over TLS vs plain (wrk, keep-alive), and the
effect of 1,000 idle slowloris connections on well-behaved clients.
Servers pinned to CPU 1, wrk to CPU 0."""

import os
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
import bench  # noqa: E402
from lib import OUT, free_port, wrk_with_cpu  # noqa: E402


def pki():
    d = os.path.join(OUT, "pki")
    os.makedirs(d, exist_ok=True)
    if not os.path.exists(os.path.join(d, "cert.pem")):
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", "key.pem", "-out", "cert.pem", "-days", "30", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=IP:127.0.0.1"], cwd=d, check=True, capture_output=True)
    return d


def demo(port, extra=""):
    return bench.rsvisor_demo(port, extra=extra, name="rsvisor-edge")


def slowloris(port, n, stop):
    """n connections that trickle header bytes and reconnect when closed."""
    socks = []

    def connect():
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        return s

    for _ in range(n):
        socks.append(connect())
    while not stop.is_set():
        for i, s in enumerate(socks):
            try:
                s.sendall(b"X: y\r\n")
            except OSError:
                s.close()
                socks[i] = connect()
        time.sleep(1.0)
    for s in socks:
        s.close()


def main():
    d = pki()
    rows = []
    for name, extra, scheme in (
        ("plain", "", "http"),
        ("tls", f'[tls]\ncert = "{d}/cert.pem"\nkey = "{d}/key.pem"\n', "https"),
    ):
        port = free_port()
        with demo(port, extra) as s:
            time.sleep(0.3)
            r = wrk_with_cpu(s, f"{scheme}://127.0.0.1:{port}/", threads=1, conns=64, duration=10, cpus="0")
            rows.append((name, r))
    print("| demo `/`, 2 workers on CPU 1, wrk -t1 -c64 -d10s on CPU 0 | req/s | p50 | p99 | CPU µs/req | errors |")
    print("|---|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['rps']:.0f} | {r['p50_ms']} ms | {r['p99_ms']} ms | {r['cpu_us_per_req']:.2f} | {r['errors']} |")

    print()
    print("| well-behaved clients (wrk -t1 -c32 -d10s) | req/s | p99 | errors |")
    print("|---|---|---|---|")
    for n in (0, 1000):
        port = free_port()
        with demo(port, "[http]\nheader_read_timeout = 10\n") as s:
            s.wait_ready("/")
            stop = threading.Event()
            t = threading.Thread(target=slowloris, args=(port, n, stop))
            t.start()
            time.sleep(2)
            r = wrk_with_cpu(s, s.url("/"), threads=1, conns=32, duration=10, cpus="0")
            stop.set()
            t.join()
            print(f"| with {n} slowloris connections open | {r['rps']:.0f} | {r['p99_ms']} ms | {r['errors']} |")


if __name__ == "__main__":
    main()
