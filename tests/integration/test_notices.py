"""Notices of the pooler's own: login_notify_message after login, and query_wait_notify's
notice to a client that has waited that long for a server."""

from __future__ import annotations

import threading
import time

import psycopg
from poolcase import start

from support import PgCluster, PoolerFactory, run_psql

WAIT_TEXT = "No server connection available in postgres backend, client being queued"


def test_login_notify_message(pg: PgCluster, pooler: PoolerFactory) -> None:
    proc = start(pooler, login_notify_message="maintenance at 22:00")
    done = run_psql(proc.dsn("postgres"), "select 41 + 1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "42"
    assert "NOTICE:  maintenance at 22:00" in done.stderr
    quiet = start(pooler)
    plain = run_psql(quiet.dsn("postgres"), "select 1")
    assert plain.returncode == 0 and "NOTICE" not in plain.stderr


def test_query_wait_notify(pg: PgCluster, pooler: PoolerFactory) -> None:
    proc = start(pooler, pool_size=1, query_wait_notify=1)
    notices: list[str] = []
    with psycopg.connect(proc.dsn("postgres")) as holder:
        holder.execute("select 1")  # holds the only server in its transaction
        waiter = psycopg.connect(proc.dsn("postgres"), autocommit=True)
        waiter.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
        started = time.monotonic()

        def release() -> None:
            time.sleep(2.5)
            holder.commit()

        thread = threading.Thread(target=release)
        thread.start()
        assert waiter.execute("select 7").fetchone() == (7,)
        thread.join()
        assert time.monotonic() - started >= 2
    assert notices == [WAIT_TEXT]  # once per wait
    # A short wait gets no notice.
    notices.clear()
    assert waiter.execute("select 8").fetchone() == (8,)
    assert notices == []
    waiter.close()
