"""How long a prepared statement lives, through the pooler as on a direct connection.

SQL DEALLOCATE of protocol-level statements, and statements shared by query text across
schema changes. Each scenario runs on a direct connection and through the pooler in
transaction mode; the observations must be the same.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator

import asyncpg
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


# ---- Statements shared by query text across schema changes

def run_async(coro: Awaitable[list[str]]) -> list[str]:
    return asyncio.run(coro)  # type: ignore[arg-type]


async def stale_param_types(kw: dict[str, object]) -> list[str]:
    """A table re-created with another column type; a new client prepares the same text."""
    seen: list[str] = []
    c1 = await asyncpg.connect(**kw)
    await c1.execute("DROP TABLE IF EXISTS stale_t; CREATE TABLE stale_t(v date)")
    for _ in range(3):
        ps = await c1.prepare("INSERT INTO stale_t VALUES ($1)")
    seen.append(f"client 1: {[t.name for t in ps.get_parameters()]}")
    await c1.close()
    c2 = await asyncpg.connect(**kw)
    await c2.execute("DROP TABLE stale_t; CREATE TABLE stale_t(v int)")
    ps = await c2.prepare("INSERT INTO stale_t VALUES ($1)")
    seen.append(f"client 2: {[t.name for t in ps.get_parameters()]}")
    try:
        await ps.fetch(42)
        seen.append("insert ok")
    except Exception as exc:
        seen.append(f"insert failed: {type(exc).__name__}")
    seen.append(f"rows: {await c2.fetch('SELECT v FROM stale_t')}")
    await c2.execute("DROP TABLE stale_t")
    await c2.close()
    return seen


async def stale_result_type(kw: dict[str, object]) -> list[str]:
    """A column added; a new client runs the same query, outside and inside a transaction."""
    seen: list[str] = []
    c1 = await asyncpg.connect(**kw)
    await c1.execute("DROP TABLE IF EXISTS stale_t2; CREATE TABLE stale_t2(a int); "
                     "INSERT INTO stale_t2 VALUES (1)")
    for _ in range(3):
        await c1.fetch("SELECT * FROM stale_t2")
    await c1.close()
    c2 = await asyncpg.connect(**kw)
    await c2.execute("ALTER TABLE stale_t2 ADD COLUMN b text")
    for label, column in (("outside", "c1"), ("inside", "c2"), ("outside again", "c3")):
        try:
            if label == "inside":
                async with c2.transaction():
                    rows = await c2.fetch("SELECT * FROM stale_t2")
            else:
                rows = await c2.fetch("SELECT * FROM stale_t2")
            seen.append(f"{label}: {[tuple(r) for r in rows]}")
        except Exception as exc:
            seen.append(f"{label}: {type(exc).__name__}")
        await c2.execute(f"ALTER TABLE stale_t2 ADD COLUMN {column} int")
    await c2.execute("DROP TABLE stale_t2")
    await c2.close()
    return seen


def asyncpg_kw(host: str, port: int) -> dict[str, object]:
    return {"host": host, "port": port, "user": "postgres", "password": "postgres",
            "database": "app"}


def wait_for_servers(pg: PgCluster, dsn: str, count: int) -> None:
    """A first client makes the pool open its min_pool_size servers; wait for them."""
    conn = low(dsn)
    try:
        assert conn.exec_(b"select 1").status == pq.ExecStatus.TUPLES_OK
        deadline = time.monotonic() + 10
        while pg.connections(user="postgres", dbname="app") < count:
            assert time.monotonic() < deadline, "the pool did not open its servers"
            time.sleep(0.1)
    finally:
        conn.finish()


@pytest.mark.parametrize("servers", [1, 2])
@pytest.mark.parametrize("scenario", [stale_param_types, stale_result_type])
def test_schema_change_as_on_a_direct_connection(
        pg: PgCluster, pooler: PoolerFactory, servers: int,
        scenario: Callable[[dict[str, object]], Awaitable[list[str]]]) -> None:
    direct = run_async(scenario(asyncpg_kw(pg.host, pg.port)))
    proc = start(pooler, pool_size=servers, server_round_robin=1, min_pool_size=servers)
    wait_for_servers(pg, proc.dsn("postgres"), servers)
    assert run_async(scenario(asyncpg_kw(proc.host, proc.port))) == direct


def shown(res: pq.abc.PGresult) -> str:
    """Status, SQLSTATE, result columns and the first row, as text."""
    state = (res.error_field(pq.DiagnosticField.SQLSTATE) or b"").decode()
    columns = [res.ftype(i) for i in range(res.nfields)]
    row = [res.get_value(0, i) for i in range(res.nfields)] if res.ntuples else []
    return f"{pq.ExecStatus(res.status).name} {state} {columns} {row}"


def old_statement_after_alter(ddl: Callable[[str], None]) -> Callable[
        [Callable[[], pq.PGconn]], list[str]]:
    """A statement parsed before ADD COLUMN fails with 0A000 at every use, on every server;
    one parsed after it sees the new column."""
    def scenario(connect: Callable[[], pq.PGconn]) -> list[str]:
        a = connect()
        out = []
        ddl("drop table if exists evolving; create table evolving(a int); "
            "insert into evolving values (1)")
        out.append(shown(a.prepare(b"sel", b"select * from evolving")))
        ddl("alter table evolving add column b text default 'b'")
        for _ in range(4):
            out.append(shown(a.exec_prepared(b"sel", [])))
        out.append(shown(a.describe_prepared(b"sel")))
        b = connect()
        for conn, name in ((a, b"sel2"), (b, b"sel")):
            out.append(shown(conn.prepare(name, b"select * from evolving")))
            for _ in range(3):
                out.append(shown(conn.exec_prepared(name, [])))
        out.append(shown(a.exec_prepared(b"sel", [])))
        return out
    return scenario


def pinned_parameter_types(ddl: Callable[[str], None]) -> Callable[
        [Callable[[], pq.PGconn]], list[str]]:
    """A statement's parameter type stays what it was parsed with: a table re-created with
    an int column makes its binary date parameter an error, never an integer."""
    def scenario(connect: Callable[[], pq.PGconn]) -> list[str]:
        a = connect()
        out = []
        ddl("drop table if exists pinned; create table pinned(v date)")
        out.append(shown(a.prepare(b"ins", b"insert into pinned values ($1)")))
        ddl("drop table pinned; create table pinned(v int)")
        for _ in range(2):
            described = a.describe_prepared(b"ins")
            out.append(f"{shown(described)} {described.param_type(0)}")
        day = (7000).to_bytes(4, "big")  # 2019-03-01 as a binary date
        for _ in range(4):
            out.append(shown(a.exec_prepared(b"ins", [day], param_formats=[1])))
        out.append(shown(a.exec_(b"select count(*) from pinned")))
        ddl("drop table pinned")
        return out
    return scenario


def same_width_type_change(ddl: Callable[[str], None]) -> Callable[
        [Callable[[], pq.PGconn]], list[str]]:
    """A column changed from int to real (4 bytes both): binary results of a statement
    parsed before must not be read as the other type; PostgreSQL says 0A000."""
    def scenario(connect: Callable[[], pq.PGconn]) -> list[str]:
        a = connect()
        out = []
        ddl("drop table if exists widths; create table widths(x int); "
            "insert into widths values (1)")
        out.append(shown(a.prepare(b"w", b"select x from widths")))
        ddl("alter table widths alter column x type real")
        for _ in range(4):
            out.append(shown(a.exec_prepared(b"w", [], result_format=1)))
        ddl("drop table widths")
        return out
    return scenario


def through(conn_dsn: str) -> Callable[[str], None]:
    """DDL sent by another client of the same target."""
    def ddl(sql: str) -> None:
        conn = low(conn_dsn)
        try:
            res = conn.exec_(sql.encode())
            assert res.status == pq.ExecStatus.COMMAND_OK, res.error_message
        finally:
            conn.finish()
    return ddl


@pytest.mark.parametrize("make", [old_statement_after_alter, pinned_parameter_types,
                                  same_width_type_change])
@pytest.mark.parametrize("seen_by_pooler", [True, False])
def test_statement_parsed_before_a_schema_change(
        pg: PgCluster, pooler: PoolerFactory, seen_by_pooler: bool,
        make: Callable[[Callable[[str], None]], Callable[[Callable[[], pq.PGconn]],
                                                         list[str]]]) -> None:
    """Over two servers in turn: the statement is prepared on one, and parsed again on the
    other after the change. The DDL goes through the pooler, or straight to PostgreSQL."""
    proc = start(pooler, pool_size=2, server_round_robin=1, min_pool_size=2)
    wait_for_servers(pg, proc.dsn("postgres"), 2)
    results = []
    for dsn in (pg.dsn("postgres"), proc.dsn("postgres")):
        ddl = through(dsn) if seen_by_pooler else through(pg.dsn("postgres"))
        opened: list[pq.PGconn] = []

        def connect(dsn: str = dsn, opened: list[pq.PGconn] = opened) -> pq.PGconn:
            opened.append(low(dsn))
            return opened[-1]

        try:
            results.append(make(ddl)(connect))
        finally:
            for conn in opened:
                conn.finish()
    assert results[1] == results[0]
