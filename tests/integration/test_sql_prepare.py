"""SQL-level PREPARE / EXECUTE / DEALLOCATE in transaction and statement mode: never a stale
definition, never an error a direct connection would not give; and statement mode's own
ROLLBACK after a refused transaction is not mistaken for a reset."""

from __future__ import annotations

import subprocess
import threading

import psycopg
import pytest
from poolcase import start

from support import PgCluster, PoolerFactory


def one(conn: psycopg.Connection, sql: str) -> object:
    row = conn.execute(sql).fetchone()
    assert row is not None
    return row[0]


def test_psql_prepare_then_execute_on_a_pool_of_one(pg: PgCluster, pooler: PoolerFactory) -> None:
    proc = start(pooler, pool_size=1)
    out = subprocess.run(
        [f"{pg.bindir}/psql", "-X", "-At", "-h", proc.host, "-p", str(proc.port), "-U",
         "postgres", "-d", "app", "-v", "ON_ERROR_STOP=1",
         "-c", "prepare p1(int) as select $1 * 2", "-c", "select 1", "-c", "execute p1(21)"],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["PREPARE", "1", "42"]
    assert "CONTEXT" not in out.stderr


def test_redefined_statement_never_runs_the_old_text(pg: PgCluster,
                                                     pooler: PoolerFactory) -> None:
    """Busy clients spread the statements over several servers."""
    proc = start(pooler, pool_size=3)
    stop = threading.Event()

    def busy() -> None:
        with psycopg.connect(proc.dsn("postgres"), autocommit=True) as c:
            while not stop.is_set():
                c.execute("select pg_sleep(0.003)")

    threads = [threading.Thread(target=busy) for _ in range(3)]
    for t in threads:
        t.start()
    bad = []
    try:
        for i in range(20):
            with psycopg.connect(proc.dsn("postgres"), autocommit=True) as c:
                c.execute("PREPARE q1 AS SELECT 1 AS a")
                for _ in range(5):
                    assert one(c, "EXECUTE q1") == 1
                c.execute("DEALLOCATE q1")
                c.execute("PREPARE q1 AS SELECT 2")
                got = [one(c, "EXECUTE q1") for _ in range(5)]
                if got != [2] * 5:
                    bad.append((i, got))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert bad == []


def test_statement_mode_refusal_does_not_leak_settings(pg: PgCluster,
                                                       pooler: PoolerFactory) -> None:
    """A sets search_path, then is refused a transaction (the pooler rolls back). B, on the
    same server, must not see A's search_path."""
    proc = start(pooler, "statement", pool_size=1)
    a = psycopg.connect(proc.dsn("postgres"), autocommit=True)
    pid = one(a, "select pg_backend_pid()")
    a.execute("set search_path = pg_catalog")
    assert one(a, "show search_path") == "pg_catalog"
    with pytest.raises(psycopg.OperationalError, match="transaction blocks not allowed"):
        a.execute("begin")
    a.close()
    with psycopg.connect(proc.dsn("postgres"), autocommit=True) as b:
        assert one(b, "select pg_backend_pid()") == pid
        assert one(b, "show search_path") == '"$user", public'


def test_statement_mode_refusal_keeps_shared_statements(pg: PgCluster,
                                                        pooler: PoolerFactory) -> None:
    proc = start(pooler, "statement", pool_size=1)
    b = psycopg.connect(proc.dsn("postgres"), autocommit=True, prepare_threshold=0)
    assert one(b, "select 41 + 1") == 42  # a named statement on the server
    a = psycopg.connect(proc.dsn("postgres"), autocommit=True)
    with pytest.raises(psycopg.OperationalError, match="transaction blocks not allowed"):
        a.execute("begin")
    a.close()
    c = psycopg.connect(proc.dsn("postgres"), autocommit=True, prepare_threshold=0)
    assert one(c, "select 41 + 1") == 42
    assert one(b, "select 41 + 1") == 42
    b.close()
    c.close()
