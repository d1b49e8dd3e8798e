"""A TLS client that reconnects with its session, as a browser does.

    tls_resume.py HOST PORT CA_PEM VERSION COUNT [--pause]

VERSION is 1.2 or 1.3. Connects once, then COUNT more times, each time
offering the session from the previous connection, and asks each time for
/pid over HTTP/1.1 with Connection: close (reconnecting up to 100 more
times until one reaches another worker than the one before). With --pause,
after the first connection it prints "have-session" and waits for a line on
stdin before reconnecting (so the caller can reload the server in between).
Prints one JSON object: how many of the COUNT reconnects resumed, which
worker pids answered, and how many reconnects switched worker and resumed.
"""
import json
import socket
import ssl
import sys


def main():
    host, port, ca, version, count = sys.argv[1:6]
    pause = "--pause" in sys.argv[6:]
    ctx = ssl.create_default_context(cafile=ca)
    v = ssl.TLSVersion.TLSv1_2 if version == "1.2" else ssl.TLSVersion.TLSv1_3
    ctx.minimum_version = v
    ctx.maximum_version = v

    def fetch(session):
        with socket.create_connection((host, int(port)), timeout=20) as raw:
            with ctx.wrap_socket(raw, server_hostname=host, session=session) as s:
                s.sendall(b"GET /pid HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                data = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 200"):
                    raise SystemExit("unexpected answer: %r" % head[:80])
                return s.session, s.session_reused, s.version(), body.decode()

    session, _, _, first_pid = fetch(None)
    if pause:
        print("have-session", flush=True)
        sys.stdin.readline()
    resumed = 0
    pids = {first_pid}
    versions = set()
    # Reconnects that reached another worker than the previous one, and
    # how many of those resumed: the point of shared ticket keys.
    switches = switches_resumed = 0
    last = first_pid
    n = 0
    # COUNT reconnects, and more (up to 100) until one reached another
    # worker: which worker accepts is the kernel's choice.
    while n < int(count) or (switches == 0 and n < int(count) + 100):
        session, reused, ver, pid = fetch(session)
        if n < int(count):
            resumed += bool(reused)
        if pid != last:
            switches += 1
            switches_resumed += bool(reused)
        last = pid
        pids.add(pid)
        versions.add(ver)
        n += 1
    print(json.dumps({"resumed": resumed, "pids": sorted(pids), "versions": sorted(versions),
                      "switches": switches, "switches_resumed": switches_resumed}), flush=True)


main()
