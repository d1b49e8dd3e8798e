"""The cost of metrics: demo `/` with metrics enabled vs disabled (workers then
skip the per-request metric counters), 4 interleaved rounds, medians.
Servers on CPU 1, wrk on CPU 0. Run after bench/run has built everything:
    bench/.venv/bin/python bench/metrics_overhead.py"""

import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(__file__))
import bench  # noqa: E402
from lib import free_port, wrk_with_cpu  # noqa: E402


def main():
    res = {True: [], False: []}
    for _ in range(4):
        for enabled in (True, False):
            port = free_port()
            extra = f"[metrics]\nenabled = {'true' if enabled else 'false'}\n"
            with bench.rsvisor_demo(port, extra=extra, name=f"metrics-{enabled}") as s:
                s.wait_ready("/")
                r = wrk_with_cpu(s, s.url("/"), threads=1, conns=64, duration=6, cpus="0")
                res[enabled].append((r["rps"], r["cpu_us_per_req"]))
    on = statistics.median(x[0] for x in res[True])
    off = statistics.median(x[0] for x in res[False])
    con = statistics.median(x[1] for x in res[True])
    coff = statistics.median(x[1] for x in res[False])
    print(f"metrics enabled:  {on:,.0f} req/s, {con:.2f} µs CPU/req")
    print(f"metrics disabled: {off:,.0f} req/s, {coff:.2f} µs CPU/req")
    print(f"throughput ratio {on / off:.3f}, CPU ratio {con / coff:.3f} (target: within 3%)")


if __name__ == "__main__":
    main()
