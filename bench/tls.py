"""TLS handshakes: rsvisor's demo (2 workers) against nginx (2 workers,
`ssl_session_cache shared:SSL:10m; ssl_session_timeout 1d;` as the
deployment guide says), with an RSA-2048 and an ECDSA P-256 certificate,
full handshakes and resumed ones (TLS 1.3 tickets), servers pinned to CPU 1
and the client (bench/tlsload.rs, rustls) to CPU 0.

Each figure is the median of ROUNDS runs, alternating the servers. Besides
handshakes per second it reports the servers' CPU time per handshake, which
says the same when the server is the bottleneck and still compares the two
when the client is. rsvisor is measured as built with each crypto provider
(bench/run tls builds the ring one into target/ring).

Writes bench/results-tls.md. Loopback only; every run is bounded.
"""

import json
import os
import subprocess
import sys
import tempfile

from lib import OUT, ROOT, Server, TICK, cpu_ticks, free_port, median, nginx_server

SERVER_CPU = "1"
LOAD_CPU = "0"
QUICK = os.environ.get("BENCH_QUICK") == "1"
SECONDS = 2 if QUICK else 3
ROUNDS = 1 if QUICK else 3
# (name, TLS 1.2 only, resume)
MODES = [("TLS 1.3 full", False, False), ("TLS 1.3 resumed", False, True),
         ("TLS 1.2 full", True, False), ("TLS 1.2 resumed", True, True)]
CONNS = 32
DEMO = {
    "aws-lc-rs": os.path.join(ROOT, "target", "release", "examples", "demo"),
    "ring": os.path.join(ROOT, "target", "ring", "release", "examples", "demo"),
}
TLSLOAD = os.path.join(ROOT, "target", "release", "examples", "tlsload")
PROVIDERS = ["aws-lc-rs", "ring"]


def sh(cmd, cwd):
    subprocess.run(cmd, shell=True, check=True, cwd=cwd, capture_output=True)


def make_certs(d):
    """A CA, and an RSA-2048 and an ECDSA P-256 server certificate it signs."""
    sh("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
       "-keyout ca.key -out ca.pem -days 2 -subj /CN=bench-ca "
       "-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign", d)
    with open(os.path.join(d, "leaf.ext"), "w") as f:
        f.write("basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
                "extendedKeyUsage=serverAuth\n")
    for name, newkey in (("rsa", "rsa:2048"), ("ecdsa", "ec -pkeyopt ec_paramgen_curve:prime256v1")):
        sh(f"openssl req -newkey {newkey} -nodes -keyout {name}.key -out {name}.csr -subj /CN=localhost && "
           f"openssl x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial "
           f"-out {name}.pem -days 2 -extfile leaf.ext", d)


def rsvisor(d, cert, provider):
    port = free_port()
    cfg = os.path.join(d, f"rsvisor-{cert}-{provider}.toml")
    with open(cfg, "w") as f:
        f.write(f'[server]\nbind = ["127.0.0.1:{port}"]\nworkers = 2\n'
                f'[tls]\ncert = "{d}/{cert}.pem"\nkey = "{d}/{cert}.key"\n'
                f'[log]\naccess_log = ""\n')
    return Server(f"rsvisor-tls-{provider}", [DEMO[provider], "serve", cfg], port, cpus=SERVER_CPU)


def nginx(d, cert, aes128_first=False):
    port = free_port()
    prefix = os.path.join(d, f"nginx-{cert}-{int(aes128_first)}")
    # The same suite order as rsvisor's, for a like-for-like row.
    order = """
    ssl_prefer_server_ciphers on;
    ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305;
    ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256;
""" if aes128_first else ""
    return nginx_server("nginx-tls", port, prefix, f"""
    ssl_session_cache shared:SSL:10m;
    ssl_session_timeout 1d;
    # nginx before 1.23.4 (Debian 12 has 1.22) leaves TLS 1.3 off by default.
    ssl_protocols TLSv1.2 TLSv1.3;
    {order}
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {d}/{cert}.pem;
        ssl_certificate_key {d}/{cert}.key;
        location = / {{ default_type text/plain; return 200 "hello world"; }}
    }}""", SERVER_CPU)


def wait_tls(server, ca):
    """Waits until a TLS request through `server` succeeds."""
    for _ in range(300):
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited: see {server.log_path}")
        r = subprocess.run(["curl", "-sf", "--cacert", ca, "-o", "/dev/null",
                            f"https://127.0.0.1:{server.port}/"], capture_output=True)
        if r.returncode == 0:
            return
        subprocess.run(["sleep", "0.1"])
    raise RuntimeError(f"{server.name} does not answer over TLS: see {server.log_path}")


def load(server, ca, tls12, resume):
    pids = server.tree()
    before = cpu_ticks(pids)
    cmd = ["taskset", "-c", LOAD_CPU, TLSLOAD, f"127.0.0.1:{server.port}", ca, str(CONNS),
           str(SECONDS)]
    if resume:
        cmd.append("--resume")
    if tls12:
        cmd.append("--tls12")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=SECONDS + 60)
    res = json.loads(out.stdout)
    used = (cpu_ticks(set(pids) | set(server.tree())) - before) / TICK
    n = res["handshakes"]
    res["cpu_us"] = used / n * 1e6 if n else None
    return res


def main():
    os.makedirs(OUT, exist_ok=True)
    d = tempfile.mkdtemp(prefix="tls-", dir=OUT)
    make_certs(d)
    ca = os.path.join(d, "ca.pem")
    servers = [(f"rsvisor ({p})", lambda c, p=p: rsvisor(d, c, p)) for p in PROVIDERS]
    servers.append(("nginx", lambda c: nginx(d, c)))
    servers.append(("nginx, AES-128 first", lambda c: nginx(d, c, True)))
    rows = {}
    for cert in ("rsa", "ecdsa"):
        for mode, tls12, resume in MODES:
            samples = {name: [] for name, _ in servers}
            for _ in range(ROUNDS):
                for name, make in servers:
                    with make(cert) as s:
                        wait_tls(s, ca)
                        r = load(s, ca, tls12, resume)
                    if r["errors"]:
                        print(f"{name} {cert} {mode}: {r['errors']} errors ({r.get('first_error')})",
                              file=sys.stderr)
                    if resume and r["resumed"] < r["handshakes"] * 0.95:
                        print(f"{name} {cert} {mode}: only {r['resumed']} of {r['handshakes']} resumed",
                              file=sys.stderr)
                    samples[name].append(r)
                    print(f"{cert} {mode} {name}: {r['handshakes_per_second']:.0f}/s, "
                          f"{r['cpu_us']:.0f} µs CPU each, {r['resumed']} resumed", flush=True)
            for name, rs in samples.items():
                rows[(cert, mode, name)] = {
                    "rate": median([r["handshakes_per_second"] for r in rs]),
                    "cpu_us": median([r["cpu_us"] for r in rs]),
                    "errors": sum(r["errors"] for r in rs),
                }
    names = [name for name, _ in servers]
    with open(os.path.join(OUT, "tls-rows.json"), "w") as f:
        json.dump({"names": names, "rows": [[list(k), v] for k, v in rows.items()]}, f)
    write(rows, names)


def write(rows, names):
    lines = [
        "# TLS handshakes: rsvisor vs nginx",
        "",
        "`bench/run tls` (bench/tls.py). 2 workers each, servers on CPU 1, the client",
        f"(bench/tlsload.rs, rustls, {CONNS} connections, each: connect, handshake, one",
        "`Connection: close` request) on CPU 0; median of "
        f"{ROUNDS} × {SECONDS} s runs per cell. *CPU µs* is the servers' CPU time",
        "(all processes) per handshake. Resumed: with the previous connection's",
        "session (rsvisor: shared tickets; nginx: tickets and",
        "`ssl_session_cache shared:SSL:10m`). rsvisor prefers AES-128-GCM-SHA256;",
        "nginx follows the client's order (AES-256-GCM-SHA384 first) or, in the",
        "`AES-128 first` column, the same order as rsvisor's. The ratios compare",
        f"the shipped build (rsvisor with {PROVIDERS[0]}) with the better nginx:",
        "by rate, and by CPU per handshake (which still compares the servers",
        "when the client, on its one CPU, is the bottleneck).",
        "",
        "| certificate | handshake | " + " | ".join(f"{n} /s" for n in names)
        + " | " + " | ".join(f"{n} CPU µs" for n in names)
        + " | rsvisor ÷ best nginx, rate | best nginx ÷ rsvisor, CPU |",
        "|---|---|" + "---:|" * (2 * len(names) + 2),
    ]
    for cert in ("rsa", "ecdsa"):
        for mode, _, _ in MODES:
            cells = [rows[(cert, mode, n)] for n in names]
            nginxes = [c for n, c in zip(names, cells) if n.startswith("nginx")]
            ng = max(c["rate"] for c in nginxes)
            ng_cpu = min(c["cpu_us"] for c in nginxes)
            shipped = rows[(cert, mode, f"rsvisor ({PROVIDERS[0]})")]
            label = "RSA-2048" if cert == "rsa" else "ECDSA P-256"
            lines.append(
                f"| {label} | {mode} | "
                + " | ".join(f"{c['rate']:,.0f}" for c in cells) + " | "
                + " | ".join(f"{c['cpu_us']:,.0f}" for c in cells)
                + f" | {shipped['rate'] / ng:.2f}× | {ng_cpu / shipped['cpu_us']:.2f}× |"
            )
    text = "\n".join(lines) + "\n"
    with open(os.path.join(ROOT, "bench", "results-tls.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    if sys.argv[1:] == ["--render"]:
        with open(os.path.join(OUT, "tls-rows.json")) as f:
            saved = json.load(f)
        write({tuple(k): v for k, v in saved["rows"]}, saved["names"])
    else:
        main()
