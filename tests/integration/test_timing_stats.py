"""Time statistics stay within the time that actually passed, in every pooling mode."""

from __future__ import annotations

import time

import psycopg
import pytest
from poolcase import start

from support import PgCluster, PoolerFactory


def console_row(proc_dsn: str, command: str, key: str) -> dict[str, str]:
    with psycopg.connect(proc_dsn, autocommit=True) as admin:
        cur = admin.execute(command)
        names = [d.name for d in cur.description or []]
        for row in cur.fetchall():
            record = dict(zip(names, [str(v) for v in row], strict=True))
            if key in record.values():
                return record
    raise AssertionError(f"{key} not in {command}")


@pytest.mark.parametrize("mode", ["session", "transaction", "statement"])
@pytest.mark.parametrize("prepare", [None, 0])
def test_query_and_transaction_times_are_plausible(pg: PgCluster, pooler: PoolerFactory,
                                                   mode: str, prepare: int | None) -> None:
    proc = start(pooler, mode, pool_size=2, admin_users="postgres")
    started = time.monotonic()
    with psycopg.connect(proc.dsn("postgres", application_name="timed"), autocommit=True,
                         prepare_threshold=prepare) as conn:
        for _ in range(50):
            conn.execute("select pg_sleep(0.001)")
    elapsed_us = (time.monotonic() - started) * 1e6
    row = console_row(proc.dsn("postgres", dbname="pgbouncer"), "SHOW APPLICATIONS", "timed")
    # 50 queries; with always-prepare, psycopg's Parse+Sync adds one more ReadyForQuery.
    assert int(row["total_query_count"]) in (50, 51)
    query_us = float(row["total_query_time"])
    assert 50 * 1000 <= query_us <= elapsed_us  # each slept 1 ms; none outlasted the run
    assert float(row["total_xact_time"]) <= elapsed_us
