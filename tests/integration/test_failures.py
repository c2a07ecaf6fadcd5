"""The server going away and coming back; the pooler keeps serving."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from poolcase import start

from support import PgCluster, PoolerFactory
from support.faults import FaultProxy


def query_ok(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
            return conn.execute("select 1").fetchone() == (1,)
    except psycopg.OperationalError:
        return False


def test_server_down_gives_clear_error_then_recovers(pg: PgCluster,
                                                     pooler: PoolerFactory) -> None:
    """Work in flight fails at once. A query that was not yet sent waits for the server, up to
    query_wait_timeout. Once logins have failed for server_login_retry, new clients are told
    at once. When the server is back, so is the pooler."""
    proc = start(pooler, pool_size=2, server_login_retry=0.5, query_wait_timeout=2)
    busy = psycopg.connect(proc.dsn("postgres"), autocommit=True)
    idle = psycopg.connect(proc.dsn("postgres"), autocommit=True)
    assert idle.execute("select 1").fetchone() == (1,)
    failures: list[tuple[float, str]] = []

    def in_flight() -> None:
        try:
            busy.execute("select pg_sleep(60)")
        except psycopg.OperationalError as exc:
            failures.append((time.monotonic(), str(exc)))

    sleeper = threading.Thread(target=in_flight)
    sleeper.start()
    deadline = time.monotonic() + 10
    while pg.sql("select count(*) from pg_stat_activity where query = 'select pg_sleep(60)'",
                 "postgres") != "1":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    stopped = time.monotonic()
    pg.stop()
    try:
        sleeper.join(10)
        assert failures and failures[0][0] - stopped < 10
        assert ("terminating connection" in failures[0][1]
                or "server conn crashed?" in failures[0][1])
        busy.close()
        # Nothing of this client's was in flight: it waits, and a server that does not come
        # back ends the wait at query_wait_timeout, not at once and not never.
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError, match="query_wait_timeout"):
            idle.execute("select 1")
        assert 1.5 < time.monotonic() - started < 10
        idle.close()
        # Logins have failed for longer than server_login_retry: new clients are told at once.
        started = time.monotonic()
        with (pytest.raises(psycopg.OperationalError,
                            match=r"server login has been failing, try again later "
                                  r"\(server_login_retry\)"),
              psycopg.connect(proc.dsn("postgres"), connect_timeout=10) as c):
            c.execute("select 1")
        assert time.monotonic() - started < 2
        assert proc.is_running()
    finally:
        pg.start()
    deadline = time.monotonic() + 15
    while not query_ok(proc.dsn("postgres")):
        assert time.monotonic() < deadline, proc.log_text()
        time.sleep(0.3)
    assert proc.is_running()


def test_server_restart_replaces_idle_servers(pg: PgCluster, pooler: PoolerFactory) -> None:
    proc = start(pooler, pool_size=2, server_login_retry=0.5)
    assert query_ok(proc.dsn("postgres"))
    pg.restart()
    # Idle servers died with the restart; a new client must get a working server, not a dead
    # one (the idle ones saw their connection close and were dropped from the pool).
    deadline = time.monotonic() + 15
    while not query_ok(proc.dsn("postgres")):
        assert time.monotonic() < deadline, proc.log_text()
        time.sleep(0.3)
    with psycopg.connect(proc.dsn("postgres"), autocommit=True) as conn:
        for _ in range(5):
            assert conn.execute("select 1").fetchone() == (1,)


def test_backend_killed_mid_transaction(pg: PgCluster, pooler: PoolerFactory) -> None:
    proc = start(pooler, pool_size=1)
    victim = psycopg.connect(proc.dsn("postgres"))
    row = victim.execute("select pg_backend_pid()").fetchone()
    assert row is not None
    pg.sql(f"select pg_terminate_backend({row[0]})", "postgres")
    with pytest.raises(psycopg.OperationalError):
        victim.execute("select 1")
    victim.close()
    assert query_ok(proc.dsn("postgres"))


def test_unreachable_server_port(pg: PgCluster, pooler: PoolerFactory) -> None:
    from support import free_port

    dead = free_port()
    proc = start(pooler, databases={"app": f"host=127.0.0.1 port={dead} dbname=app",
                                    "live": f"host=127.0.0.1 port={pg.port} dbname=app"})
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError, match="cannot connect to server"):
        psycopg.connect(proc.dsn("postgres", dbname="app"), connect_timeout=10)
    assert time.monotonic() - started < 5
    # Within server_login_retry the answer is immediate and worded as PgBouncer words it.
    with pytest.raises(psycopg.OperationalError,
                       match=r"server login has been failing, try again later "
                             r"\(server_login_retry\)"):
        psycopg.connect(proc.dsn("postgres", dbname="app"), connect_timeout=10)
    # Other databases are unaffected.
    assert query_ok(proc.dsn("postgres", dbname="live"))


def test_server_reset_mid_result(pg: PgCluster, pooler: PoolerFactory) -> None:
    """The link to the server is reset inside a DataRow: that client gets an error, everyone
    else is served as before."""
    with FaultProxy(pg.port) as proxy:
        proc = start(pooler, pool_size=2,
                     databases={"app": f"host=127.0.0.1 port={proxy.port} dbname=app"})
        other = psycopg.connect(proc.dsn("postgres"), autocommit=True)
        assert other.execute("select 1").fetchone() == (1,)
        victim = psycopg.connect(proc.dsn("postgres"), autocommit=True)
        proxy.downstream.reset_after(300_000)
        with pytest.raises(psycopg.OperationalError) as err:
            victim.execute("select repeat('x', 100) from generate_series(1, 100000)")
        assert "lost synchronization" not in str(err.value)
        assert proxy.downstream.reset_done.is_set()
        victim.close()
        assert other.execute("select 2").fetchone() == (2,)
        assert query_ok(proc.dsn("postgres"))
        assert proc.is_running()
        assert "server conn crashed?" in proc.log_text()
        other.close()
