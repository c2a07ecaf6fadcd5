"""The process_* families every Prometheus client library exports, read from /proc.

Strategy: read at scrape time from /proc/self (stat, statm, fd, limits), as the standard
collectors do, so dashboards and alerts written for any other process work unchanged. On a
system without /proc (not Linux) the families are left out rather than made up.
"""

from __future__ import annotations

import os
import resource

Sample = tuple[str, str, str, float]  # name, type, help, value

_PROC = "/proc/self"


def _boot_time() -> float:
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("btime "):
                return float(line.split()[1])
    return 0.0


def read() -> list[Sample]:
    """This process's CPU time, memory, descriptors and start time (empty without /proc)."""
    try:
        with open(f"{_PROC}/stat") as f:
            stat = f.read()
        boot = _boot_time()
        fds = len(os.listdir(f"{_PROC}/fd"))
    except OSError:
        return []
    # The command name (2nd field) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2:].split()
    ticks = os.sysconf("SC_CLK_TCK")
    page = os.sysconf("SC_PAGE_SIZE")
    # Fields counted from 3 (state): utime 14, stime 15, starttime 22, vsize 23, rss 24.
    utime, stime = int(fields[11]), int(fields[12])
    start = int(fields[19])
    vsize, rss = int(fields[20]), int(fields[21])
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return [
        ("process_cpu_seconds_total", "counter", "User and system CPU time spent in seconds.",
         (utime + stime) / ticks),
        ("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.",
         rss * page),
        ("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", vsize),
        ("process_open_fds", "gauge", "Number of open file descriptors.", fds),
        ("process_max_fds", "gauge", "Maximum number of open file descriptors.",
         soft if soft != resource.RLIM_INFINITY else -1),
        ("process_start_time_seconds", "gauge",
         "Start time of the process since unix epoch in seconds.", boot + start / ticks),
    ]
