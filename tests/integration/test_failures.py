"""The server going away and coming back; the pooler keeps serving."""

from __future__ import annotations

import time

import psycopg
import pytest
from poolcase import start

from support import PgCluster, PoolerFactory


def query_ok(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
            return conn.execute("select 1").fetchone() == (1,)
    except psycopg.OperationalError:
        return False


def test_server_down_gives_clear_error_then_recovers(pg: PgCluster,
                                                     pooler: PoolerFactory) -> None:
    proc = start(pooler, pool_size=2, server_login_retry=0.5)
    conn = psycopg.connect(proc.dsn("postgres"), autocommit=True)
    assert conn.execute("select 1").fetchone() == (1,)
    pg.stop()
    try:
        # A connected client's next query fails promptly with a clear error, no hang.
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError) as err:
            conn.execute("select 1")
        assert time.monotonic() - started < 10
        assert ("server conn crashed?" in str(err.value)
                or "cannot connect to server" in str(err.value)
                or "terminating connection" in str(err.value))
        conn.close()
        # New clients are told at once too.
        started = time.monotonic()
        with (pytest.raises(psycopg.OperationalError) as err2,
              psycopg.connect(proc.dsn("postgres"), connect_timeout=10) as c):
            c.execute("select 1")
        assert time.monotonic() - started < 10
        assert ("cannot connect to server" in str(err2.value)
                or "server login has been failing" in str(err2.value))
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
