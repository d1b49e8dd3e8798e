"""A TLS client that reconnects with its session, as a browser does.

    tls_resume.py HOST PORT CA_PEM VERSION COUNT [--pause]

VERSION is 1.2 or 1.3. Connects once, then COUNT more times, each time
offering the session from the previous connection, and asks each time for
/pid over HTTP/1.1 with Connection: close. With --pause, after the first
connection it prints "have-session" and waits for a line on stdin before
reconnecting (so the caller can reload the server in between). Prints one
JSON object: how many reconnects resumed, and which worker pids answered.
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
    for _ in range(int(count)):
        session, reused, ver, pid = fetch(session)
        resumed += bool(reused)
        pids.add(pid)
        versions.add(ver)
    print(json.dumps({"resumed": resumed, "pids": sorted(pids), "versions": sorted(versions)}), flush=True)


main()
