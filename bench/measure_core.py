"""The core figures: start to first 200, RSS, wrk throughput, and errors
during 5 HUP reloads under load, rsvisor demo vs gunicorn + UvicornWorker."""

import os
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
import bench  # noqa: E402
from lib import free_port, rss_kib, wrk, children  # noqa: E402


# Unpinned, as issues 3 and 4 measured: both CPUs for server and wrk.
def rsvisor(port, extra=""):
    return bench.rsvisor_demo(port, extra=extra, cpus=None)


def gunicorn(port, extra=()):
    return bench.gunicorn(port, extra=extra, cpus=None)


def footprint(s):
    time.sleep(0.5)
    workers = children(s.pid)
    return rss_kib(s.pid), [rss_kib(w) for w in workers]


def hups_under_load(s, hups=5, duration=20):
    res = {}
    t = threading.Thread(target=lambda: res.update(wrk(s.url("/"), threads=1, conns=32, duration=duration, cpus=None)))
    t.start()
    interval = duration / (hups + 1)
    for _ in range(hups):
        time.sleep(interval)
        s.signal(signal.SIGHUP)
    t.join()
    return res


def main():
    rows = []
    for make in (rsvisor, gunicorn):
        port = free_port()
        with make(port) as s:
            start = s.wait_ready("/")
            master, workers = footprint(s)
            steady = wrk(s.url("/"), threads=1, conns=64, duration=10, cpus=None)
            rows.append((s.name, start, master, workers, steady))
    print("| server | start→first 200 | master RSS | worker RSS | req/s (wrk -t1 -c64 -d10s) | p99 | errors |")
    print("|---|---|---|---|---|---|---|")
    for name, start, master, workers, st in rows:
        print(f"| {name} | {start*1000:.0f} ms | {master/1024:.1f} MiB | {', '.join(f'{w/1024:.1f}' for w in workers)} MiB | "
              f"{st['rps']:.0f} | {st['p99_ms']} ms | {st['errors']} |")
    print()
    print("| server | 5 HUPs in 20 s under wrk -t1 -c32: requests | errors | req/s |")
    print("|---|---|---|---|")
    for make in (rsvisor, gunicorn):
        port = free_port()
        with make(port) as s:
            s.wait_ready("/")
            r = hups_under_load(s)
            print(f"| {s.name} | {r['requests']} | {r['errors']} | {r['rps']:.0f} |")
            if s.name == "rsvisor":
                with open(s.log_path) as f:
                    times = [l.split("elapsed_ms=")[1].split()[0] for l in f if "reload complete" in l]
                print(f"  rsvisor reload durations (HUP → all new workers ready, old ones draining): {times} ms")


if __name__ == "__main__":
    main()
