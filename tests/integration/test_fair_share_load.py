"""Fair queueing under load: one application floods a pool of 10 servers with 100 clients in
a tight loop while another runs 5; the small one still gets its weighted share of the
transactions. Both are real pgbench runs against the pooler, told apart by
application_name; the counts and the latencies come from pgbench's own per-transaction logs,
so they are what the clients saw. (The p99 wait is a speed figure: bench/fair_queue.py
reports it; here it is only printed.)"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from poolcase import USERLIST

from support import PgCluster, PoolerFactory, PoolerProc, tool_path

POOL = 10
SLEEP_MS = 20  # each transaction holds its server this long
SECONDS = 8


@pytest.fixture
def script() -> Iterator[str]:
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(f"SELECT pg_sleep({SLEEP_MS / 1000});\n")
    os.chmod(f.name, 0o644)
    yield f.name
    os.unlink(f.name)


def bench(proc: PoolerProc, app: str, clients: int, script: str,
          logdir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [tool_path("pgbench"), "-n", "-f", script, "-c", str(clients),
         "-j", "2" if clients > 10 else "1", "-T", str(SECONDS), "-l",
         f"--log-prefix={logdir / app}", "-h", proc.host, "-p", str(proc.port),
         "-U", "postgres", "app"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PGAPPNAME": app})


def latencies_ms(logdir: Path, app: str) -> list[float]:
    """Per-transaction latencies of one application, from its pgbench logs; a failed
    transaction fails the test."""
    out = []
    for path in logdir.glob(f"{app}.*"):
        for line in path.read_text().splitlines():
            fields = line.split()
            assert fields[2].isdigit(), f"{app}: {line}"
            out.append(int(fields[2]) / 1000)
    return out


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(len(ordered) * 0.99) - 1)]


def run(pooler: PoolerFactory, script: str,
        weights: str) -> tuple[int, int, list[float], list[float]]:
    proc = pooler({"databases": pooler.databases(),
                   "pgbouncer": {"pool_mode": "transaction", "auth_type": "trust",
                                 "default_pool_size": str(POOL), "max_client_conn": "200"},
                   "pgusher": {"app_weights": weights}}, USERLIST)
    with tempfile.TemporaryDirectory() as tmp:
        logdir = Path(tmp)
        runs = [bench(proc, "noisy", 100, script, logdir),
                bench(proc, "small", 5, script, logdir)]
        for r in runs:
            out, err = r.communicate(timeout=SECONDS + 60)
            assert r.returncode == 0, err
            assert "number of failed transactions: 0" in out, out
        noisy = latencies_ms(logdir, "noisy")
        small = latencies_ms(logdir, "small")
    print(f"weights {weights or 'equal'}: noisy {len(noisy)} transactions, small "
          f"{len(small)} ({len(small) / (len(noisy) + len(small)):.1%}); small "
          f"{median(small):.1f} / {p99(small):.1f} ms p50 / p99 (noisy "
          f"{median(noisy):.1f} / {p99(noisy):.1f} ms), each holding its server "
          f"{SLEEP_MS} ms")
    return len(noisy), len(small), small, noisy


def test_equal_weights_the_small_application_is_not_starved(
        pg: PgCluster, pooler: PoolerFactory, script: str) -> None:
    noisy, small, small_ms, noisy_ms = run(pooler, script, "")
    # Equal weights: half the pool is the small application's, more than its 5 clients can
    # use (each spends part of every round trip off the server), so its fair share is all
    # it asks for. Served in arrival order it would get about 5 of every 105 transactions;
    # here it gets over six times that.
    assert small / (noisy + small) >= 0.30
    # It is not queued behind the flood: a small client waits for one or two servers to be
    # released, a noisy one for its place in a queue of about 95.
    assert median(small_ms) < SLEEP_MS * 2 < median(noisy_ms) / 4


def test_weights_set_the_shares(pg: PgCluster, pooler: PoolerFactory, script: str) -> None:
    # noisy:3 leaves the small application a quarter of the servers, fewer than its 5
    # clients could use: the weight, not its demand, sets its share.
    noisy, small, _, _ = run(pooler, script, "noisy:3")
    fraction = small / (noisy + small)
    assert 0.25 * 0.9 <= fraction <= 0.25 * 1.25, fraction
