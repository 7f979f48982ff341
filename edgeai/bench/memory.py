"""Machine measurements for benchmarks: resident memory, read bandwidth, how busy the machine is.

Stdlib + NumPy only (bandwidth needs NumPy); the peak-RSS and /proc helpers also run inside peers' venvs.
"""
from __future__ import annotations

import os
import resource
import threading
import time


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB: VmHWM from /proc/self/status (ru_maxrss as a fallback;
    on Linux ru_maxrss also carries the parent's peak across fork+exec, so it overstates a child's peak)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


# ------------------------------------------------------------------------------------------- busy cores
_BUSY_FIELDS = (0, 1, 2, 5, 6)  # user nice system irq softirq (idle, iowait, steal, guest* excluded)


def cpu_times() -> dict:
    """Busy and steal CPU seconds of the whole machine since boot, from /proc/stat's aggregate line."""
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    v = [int(x) for x in parts]
    hz = os.sysconf("SC_CLK_TCK")
    return {"busy_s": sum(v[i] for i in _BUSY_FIELDS if i < len(v)) / hz,
            "steal_s": (v[7] if len(v) > 7 else 0) / hz, "t": time.monotonic()}


def foreign_cores(before: dict, after: dict, own_cpu_s: float) -> float:
    """Average number of cores used by OTHER processes between two cpu_times() samples, given the CPU
    seconds our own processes used meanwhile (child utime+stime). Never negative."""
    wall = after["t"] - before["t"]
    if wall <= 0:
        return 0.0
    return max(0.0, (after["busy_s"] - before["busy_s"] - own_cpu_s) / wall)


def steal_cores(before: dict, after: dict) -> float:
    wall = after["t"] - before["t"]
    return max(0.0, (after["steal_s"] - before["steal_s"]) / wall) if wall > 0 else 0.0


def busy_now(seconds: float = 1.0) -> float:
    """Cores busy on the machine over the next `seconds` (this process sleeps meanwhile)."""
    a = cpu_times()
    time.sleep(seconds)
    return foreign_cores(a, cpu_times(), 0.0)


def wait_for_quiet(limit: float = 0.25, max_wait_s: float = 30.0, sample_s: float = 1.0) -> tuple:
    """Sleep until fewer than `limit` cores are busy, at most max_wait_s. Returns (busy, waited_s)."""
    t0 = time.monotonic()
    while True:
        b = busy_now(sample_s)
        waited = time.monotonic() - t0
        if b <= limit or waited >= max_wait_s:
            return b, waited


# ------------------------------------------------------------------------------------------- bandwidth
def read_bandwidth(size_mb: int = 1024, reps: int = 5, threads: int = 1) -> dict:
    """Best sustained read bandwidth (GB/s, 1e9 bytes) of summing a float32 array of size_mb MiB, split
    over `threads` Python threads (NumPy releases the GIL in the reduction). The array is touched first so
    page faults are not timed. Returns {"gbps", "all_gbps", "bytes", "threads"}."""
    import numpy as np

    n = size_mb * 2**20 // 4
    a = np.ones(n, np.float32)
    parts = np.array_split(a, threads)
    sink = [0.0] * threads

    def work(i):
        sink[i] = float(np.add.reduce(parts[i]))

    rates = []
    for _ in range(reps):
        t0 = time.perf_counter()
        if threads == 1:
            work(0)
        else:
            ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
        dt = time.perf_counter() - t0
        rates.append(a.nbytes / dt / 1e9)
    return {"gbps": max(rates), "all_gbps": [round(r, 3) for r in rates], "bytes": n * 4, "threads": threads}


def read_bandwidth_child(size_mb: int = 1024, reps: int = 5, threads=(1, 2), python=None) -> dict:
    """read_bandwidth in a separate process (the big array never inflates the caller's memory), for each
    thread count: {"1_thread": {...}, "2_threads": {...}}."""
    import json
    import subprocess
    import sys

    code = ("import json,sys; from edgeai.bench.memory import read_bandwidth; "
            "print(json.dumps([read_bandwidth(int(sys.argv[1]), int(sys.argv[2]), int(t)) for t in sys.argv[3:]]))")
    import os
    from pathlib import Path

    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent.parent)  # this edgeai, installed or not
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run([python or sys.executable, "-c", code, str(size_mb), str(reps), *map(str, threads)],
                       capture_output=True, text=True, check=True, env=env)
    out = json.loads(p.stdout.strip().splitlines()[-1])
    return {f"{t}_thread{'s' if t > 1 else ''}": r for t, r in zip(threads, out)}
