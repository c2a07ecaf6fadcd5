"""How long a prepared statement lives, through the pooler as on a direct connection.

SQL DEALLOCATE of protocol-level statements, and statements shared by query text across
schema changes. Each scenario runs on a direct connection and through the pooler in
transaction mode; the observations must be the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import psycopg
import psycopg._connection_base
import pytest
from poolcase import start
from psycopg import pq

from support import PgCluster, PoolerFactory

Observation = tuple[str, str, str, str]


def low(dsn: str) -> pq.PGconn:
    conn = pq.PGconn.connect(dsn.encode())
    assert conn.status == pq.ConnStatus.OK, conn.error_message
    return conn


def seen(conn: pq.PGconn, res: pq.abc.PGresult) -> Observation:
    """What a client can tell of one result: status, SQLSTATE, command tag, transaction."""
    return (pq.ExecStatus(res.status).name,
            (res.error_field(pq.DiagnosticField.SQLSTATE) or b"").decode(),
            (res.command_status or b"").decode(),
            pq.TransactionStatus(conn.transaction_status).name)


def both(pg: PgCluster, dsn: str,
         scenario: Callable[[pq.PGconn], list[Observation]]) -> list[Observation]:
    """Run ``scenario`` directly and through the pooler; they must agree."""
    direct = low(pg.dsn("postgres"))
    pooled = low(dsn)
    try:
        expected = scenario(direct)
        got = scenario(pooled)
    finally:
        direct.finish()
        pooled.finish()
    assert got == expected
    return got


def deallocate_scenario(conn: pq.PGconn) -> list[Observation]:
    out: list[Observation] = []

    def run(res: pq.abc.PGresult) -> None:
        out.append(seen(conn, res))

    run(conn.prepare(b"s1", b"select 1"))
    run(conn.exec_(b"DEALLOCATE s1"))
    run(conn.exec_prepared(b"s1", []))
    run(conn.prepare(b"s1", b"select 'again'"))
    run(conn.exec_prepared(b"s1", []))
    run(conn.exec_(b"deallocate prepare S1"))  # folds to s1
    run(conn.prepare(b"Mixed", b"select 2"))
    run(conn.exec_(b"DEALLOCATE Mixed"))  # folds to mixed: does not exist
    run(conn.exec_(b'DEALLOCATE PREPARE "Mixed"'))
    run(conn.exec_prepared(b"Mixed", []))
    run(conn.exec_(b"DEALLOCATE never_prepared"))
    # In an aborted transaction DEALLOCATE fails and the statement stays.
    run(conn.prepare(b"s2", b"select 22"))
    run(conn.exec_(b"begin"))
    run(conn.exec_(b"select 1/0"))
    run(conn.exec_(b"DEALLOCATE s2"))
    run(conn.exec_(b"DEALLOCATE ALL"))
    run(conn.exec_(b"rollback"))
    run(conn.exec_prepared(b"s2", []))
    # DEALLOCATE is not undone by ROLLBACK.
    run(conn.exec_(b"begin"))
    run(conn.exec_(b"DEALLOCATE s2"))
    run(conn.exec_prepared(b"s2", []))
    run(conn.exec_(b"rollback"))
    run(conn.exec_prepared(b"s2", []))
    # DISCARD ALL fails inside a transaction and keeps the statements.
    run(conn.prepare(b"s3", b"select 3"))
    run(conn.exec_(b"begin"))
    run(conn.exec_(b"DISCARD ALL"))
    run(conn.exec_(b"rollback"))
    run(conn.exec_prepared(b"s3", []))
    run(conn.exec_(b"DEALLOCATE ALL"))
    run(conn.exec_prepared(b"s3", []))
    # The extended protocol: DEALLOCATE as the unnamed statement (psycopg in a pipeline).
    run(conn.prepare(b"s4", b"select 4"))
    run(conn.exec_params(b"DEALLOCATE s4", []))
    run(conn.exec_prepared(b"s4", []))
    run(conn.prepare(b"s5", b"select 5"))
    run(conn.exec_(b"begin"))
    run(conn.exec_(b"select 1/0"))
    run(conn.exec_params(b"DEALLOCATE s5", []))
    run(conn.exec_(b"rollback"))
    run(conn.exec_prepared(b"s5", []))
    return out


def test_sql_deallocate_of_protocol_statements(pg: PgCluster, pooler: PoolerFactory) -> None:
    """SQL DEALLOCATE of a protocol-level name frees the client's name, as PostgreSQL does."""
    proc = start(pooler, pool_size=2, server_round_robin=1)
    got = both(pg, proc.dsn("postgres"), deallocate_scenario)
    assert ("COMMAND_OK", "", "DEALLOCATE", "IDLE") in got


def test_deallocate_keeps_the_shared_statement_of_others(pg: PgCluster,
                                                        pooler: PoolerFactory) -> None:
    proc = start(pooler, pool_size=1)
    a = low(proc.dsn("postgres"))
    b = low(proc.dsn("postgres"))
    try:
        for conn in (a, b):
            assert conn.prepare(b"same", b"select 'shared'").status == pq.ExecStatus.COMMAND_OK
        for _ in range(3):
            assert a.exec_(b"DEALLOCATE same").command_status == b"DEALLOCATE"
            assert b.exec_prepared(b"same", []).get_value(0, 0) == b"shared"
            assert a.prepare(b"same", b"select 'shared'").status == pq.ExecStatus.COMMAND_OK
            assert a.exec_prepared(b"same", []).get_value(0, 0) == b"shared"
    finally:
        a.finish()
        b.finish()


@pytest.fixture
def sql_deallocate() -> Iterator[None]:
    """psycopg as built with libpq < 17: it evicts statements with SQL DEALLOCATE."""
    base = psycopg._connection_base
    saved = base._HAS_SEND_CLOSE
    base._HAS_SEND_CLOSE = False
    try:
        yield
    finally:
        base._HAS_SEND_CLOSE = saved


@pytest.mark.parametrize("pipeline", [False, True])
def test_psycopg_evicts_with_sql_deallocate(pg: PgCluster, pooler: PoolerFactory,
                                            sql_deallocate: None, pipeline: bool) -> None:
    """More distinct prepared queries than prepared_max: every eviction is a DEALLOCATE."""
    proc = start(pooler, pool_size=2)
    errors: list[str] = []
    with psycopg.connect(proc.dsn("postgres"), autocommit=True, prepare_threshold=0) as conn:
        conn.prepared_max = 100
        for i in range(250):
            try:
                if pipeline:
                    with conn.pipeline():
                        cur = conn.execute(f"select {i} as q{i}, %s::int", (i,))
                    row = cur.fetchone()
                else:
                    row = conn.execute(f"select {i} as q{i}, %s::int", (i,)).fetchone()
                assert row == (i, i)
            except psycopg.Error as exc:
                errors.append(f"{i}: {type(exc).__name__}: {exc}")
        assert errors == []
        # Every statement still prepared works; evicted ones are prepared again.
        for i in range(0, 250, 7):
            assert conn.execute(f"select {i} as q{i}, %s::int", (i,)).fetchone() == (i, i)
