"""Timeouts set per user in [users] and per database in [databases], and how they end a
client: FATAL 08P01 with PgBouncer's words, after a "closing because" line for the server."""

from __future__ import annotations

import re
import threading
import time

import psycopg
import pytest
from poolcase import USERLIST

from support import PgCluster, PoolerFactory, PoolerProc


def assert_closed_both(proc: PoolerProc, reason: str) -> None:
    """The server's closing line comes first, then the client's, both with ``reason``."""
    text = proc.log_text()
    server = re.search(rf"S-0x[0-9a-f]+: \S+ closing because: {reason} ", text)
    client = re.search(rf"C-0x[0-9a-f]+: \S+ closing because: {reason} ", text)
    assert server is not None and client is not None, text
    assert server.start() < client.start()


def start_with_user(pooler: PoolerFactory, pg: PgCluster, user_settings: str,
                    db_extra: str = "", **main: str) -> PoolerProc:
    """A trust pooler whose [users] entry for postgres carries ``user_settings``."""
    settings = {"pool_mode": "transaction", "auth_type": "trust", "default_pool_size": "1"}
    settings.update(main)
    db = f"host=127.0.0.1 port={pg.port} dbname=app {db_extra}"
    return pooler({"databases": {"app": db},
                   "users": {"postgres": user_settings} if user_settings else {},
                   "pgbouncer": settings}, USERLIST)


def test_user_query_timeout_overrides_global(pg: PgCluster, pooler: PoolerFactory) -> None:
    proc = start_with_user(pooler, pg, "query_timeout=1", query_timeout="100")
    with psycopg.connect(proc.dsn("postgres"), autocommit=True) as conn:
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError, match="query timeout") as info:
            conn.execute("select pg_sleep(10)")
        assert time.monotonic() - started < 5
        assert info.value.sqlstate == "08P01"
    assert_closed_both(proc, "query timeout")
    # Another user keeps the global value: a 2 s query runs to its end.
    with psycopg.connect(proc.dsn("scram_user"), autocommit=True) as other:
        assert other.execute("select pg_sleep(2), 1").fetchone() == ("", 1)


def test_query_timeout_leaves_an_idle_transaction_alone(pg: PgCluster,
                                                        pooler: PoolerFactory) -> None:
    proc = start_with_user(pooler, pg, "query_timeout=1")
    with psycopg.connect(proc.dsn("postgres")) as conn:
        conn.execute("select 1")
        time.sleep(2.5)  # idle in its transaction: no query is running
        assert conn.execute("select 2").fetchone() == (2,)


@pytest.mark.parametrize("key,message", [
    ("idle_transaction_timeout", "idle transaction timeout"),
    ("transaction_timeout", "transaction timeout"),
])
def test_user_transaction_timeouts(pg: PgCluster, pooler: PoolerFactory, key: str,
                                   message: str) -> None:
    proc = start_with_user(pooler, pg, f"{key}=1", **{key: "1000"})
    conn = psycopg.connect(proc.dsn("postgres"))
    conn.execute("select 1")
    time.sleep(2.5)
    with pytest.raises(psycopg.OperationalError, match=message) as info:
        conn.execute("select 1")
    assert info.value.sqlstate == "08P01"
    conn.close()
    assert_closed_both(proc, message)
    # A transaction that stays shorter than the limit is not touched.
    with psycopg.connect(proc.dsn("postgres")) as ok:
        ok.execute("select 1")
        time.sleep(0.3)
        assert ok.execute("select 2").fetchone() == (2,)


def test_user_client_idle_timeout(pg: PgCluster, pooler: PoolerFactory) -> None:
    proc = start_with_user(pooler, pg, "client_idle_timeout=1",
                           client_idle_timeout="1000")
    conn = psycopg.connect(proc.dsn("postgres"), autocommit=True)
    conn.execute("select 1")
    patient = psycopg.connect(proc.dsn("scram_user"), autocommit=True)
    patient.execute("select 1")
    time.sleep(2.5)
    with pytest.raises(psycopg.OperationalError):
        conn.execute("select 1")
    conn.close()
    assert "closing because: client_idle_timeout" in proc.log_text()
    assert patient.execute("select 1").fetchone() == (1,)
    patient.close()


def _hold_the_server(proc: PoolerProc, seconds: float) -> threading.Thread:
    def run() -> None:
        with psycopg.connect(proc.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f"select pg_sleep({seconds})")

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(0.3)
    return thread


@pytest.mark.parametrize("where", ["user", "database"])
def test_query_wait_timeout_per_user_and_database(pg: PgCluster, pooler: PoolerFactory,
                                                  where: str) -> None:
    """pool_size 1, a 3 s query holds the server: with 1 s set for the user or the
    database (and 200 s globally) the next client is refused after about a second."""
    if where == "user":
        proc = start_with_user(pooler, pg, "query_wait_timeout=1", query_wait_timeout="200")
    else:
        proc = start_with_user(pooler, pg, "", "query_wait_timeout=1",
                               query_wait_timeout="200")
    holder = _hold_the_server(proc, 3)
    started = time.monotonic()
    with psycopg.connect(proc.dsn("postgres"), autocommit=True) as conn, \
            pytest.raises(psycopg.OperationalError, match="query_wait_timeout"):
        conn.execute("select 1")
    assert time.monotonic() - started < 2.8
    holder.join()
    # A wait shorter than the limit is served.
    holder = _hold_the_server(proc, 0.5)
    with psycopg.connect(proc.dsn("postgres"), autocommit=True) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    holder.join()


def test_query_timeout_also_ends_a_wait(pg: PgCluster, pooler: PoolerFactory) -> None:
    """A client still waiting for a server when query_timeout passes is told so. The only
    server is held by a transaction left idle, which query_timeout does not end."""
    proc = start_with_user(pooler, pg, "", query_timeout="1", query_wait_timeout="0")
    with psycopg.connect(proc.dsn("postgres")) as holder:
        holder.execute("select 1")
        with psycopg.connect(proc.dsn("postgres"), autocommit=True) as conn, \
                pytest.raises(psycopg.OperationalError, match="query_timeout"):
            conn.execute("select 1")
        holder.commit()
        assert holder.execute("select 2").fetchone() == (2,)
