"""Latency percentiles from pgbench's per-transaction logs (``pgbench -l``).

Strategy: pgbench writes one log file per thread under ``--log-prefix`` (``PREFIX.PID``
for the first thread, ``PREFIX.PID.N`` for the others).  Each line is::

    client_id transaction_no time script_no time_epoch time_us [schedule_lag] [retries]

where ``time`` is the transaction's latency in microseconds, or ``failed`` / ``skipped``
for transactions that have none.  Every file in the directory is read, the numeric
latencies are sorted, and percentiles are taken by the nearest-rank method (the value
below which the given fraction of samples lie; no interpolation).  With
``--sampling-rate`` only that fraction of transactions is logged, which keeps the files
small at tens of thousands of transactions per second.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Latency:
    samples: int
    p50_ms: float | None
    p99_ms: float | None


def read_latencies_us(directory: Path) -> list[int]:
    """Latencies (µs) of all logged transactions in ``directory``, unsorted."""
    values: list[int] = []
    for path in sorted(directory.iterdir()):
        with path.open(errors="replace") as f:
            for line in f:
                fields = line.split(maxsplit=3)
                if len(fields) >= 3 and fields[2].isdigit():
                    values.append(int(fields[2]))
    return values


def percentile(ordered: Sequence[int], fraction: float) -> int:
    """Nearest-rank percentile of already sorted, non-empty ``ordered``."""
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def summarize(latencies_us: list[int]) -> Latency:
    if not latencies_us:
        return Latency(samples=0, p50_ms=None, p99_ms=None)
    ordered = sorted(latencies_us)
    return Latency(
        samples=len(ordered),
        p50_ms=percentile(ordered, 0.50) / 1000,
        p99_ms=percentile(ordered, 0.99) / 1000,
    )


def from_logs(directory: Path) -> Latency:
    return summarize(read_latencies_us(directory))
