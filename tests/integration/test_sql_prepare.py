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


def _results(conn: psycopg.Connection, steps: list[tuple[str, str]]) -> list[object]:
    """Each step's status and rows, or its SQLSTATE: ("prep", text) prepares with the
    protocol (psycopg's _pg3_0, _pg3_1, ...), ("q", text) runs a query."""
    out: list[object] = []
    for kind, sql in steps:
        try:
            cur = conn.execute(sql, prepare=True) if kind == "prep" else conn.execute(sql)
            out.append((cur.statusmessage, cur.fetchall() if cur.description else None))
        except psycopg.Error as exc:
            out.append(exc.sqlstate)
    return out


ONE_NAMESPACE = [
    [("prep", "select 41 + 1 as x"), ("q", "EXECUTE _pg3_0")],
    [("prep", "select 41 + 1 as x"), ("q", "EXPLAIN (costs off) EXECUTE _pg3_0")],
    [("prep", "select 41 + 1 as x"), ("q", "begin"),  # (a temporary table stays on its server)
     ("q", "CREATE TEMP TABLE ctas AS EXECUTE _pg3_0"), ("q", "select x from ctas"),
     ("q", "commit")],
    [("prep", "select 41 + 1 as x"), ("q", "DEALLOCATE _pg3_0"), ("q", "EXECUTE _pg3_0")],
    [("q", "PREPARE s1(int) AS SELECT $1 + 1"), ("q", "EXPLAIN (costs off) EXECUTE s1(1)"),
     ("q", "CREATE TABLE IF NOT EXISTS ctas_plain AS EXECUTE s1(2) WITH NO DATA"),
     ("q", "select count(*) from ctas_plain"), ("q", "DROP TABLE ctas_plain")],
    [("q", "EXECUTE nothing_here"), ("q", "EXPLAIN EXECUTE nothing_here")],
]


@pytest.mark.parametrize("steps", ONE_NAMESPACE)
@pytest.mark.parametrize("protocol", ["extended", "simple"])
def test_sql_and_protocol_statements_share_one_name_space(
        pg: PgCluster, pooler: PoolerFactory, steps: list[tuple[str, str]],
        protocol: str) -> None:
    """EXECUTE, EXPLAIN EXECUTE and CREATE TABLE AS EXECUTE run a statement prepared with
    the protocol, and DEALLOCATE drops it, as on a direct connection; psycopg's ClientCursor
    sends the queries with the simple protocol."""
    proc = start(pooler, pool_size=2)
    kw: dict[str, object] = {"autocommit": True}
    if protocol == "simple":
        kw["cursor_factory"] = psycopg.ClientCursor
    with psycopg.connect(pg.dsn("postgres"), **kw) as direct:  # type: ignore[arg-type]
        want = _results(direct, steps)
    with psycopg.connect(proc.dsn("postgres"), **kw) as pooled:  # type: ignore[arg-type]
        got = _results(pooled, steps)
    assert got == want
