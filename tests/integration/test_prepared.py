"""Protocol-level prepared statements in transaction mode, with real drivers."""

from __future__ import annotations

import asyncio
import socket
import struct
import time

import asyncpg
import psycopg
import pytest
from poolcase import pg_now, pooler_backends, start
from psycopg import pq

from support import PgCluster, PoolerFactory, parse_pgbench, run_pgbench


def test_asyncpg_fifty_tasks_over_two_servers(pg: PgCluster, pooler: PoolerFactory) -> None:
    """The issue's first test: asyncpg's statement cache across a pool of 2 servers."""
    pg.sql("drop table if exists pitems; create table pitems(id int primary key, v text)")
    since = pg_now(pg)
    proc = start(pooler, pool_size=2, max_client_conn=200)

    async def task(n: int) -> int:
        conn = await asyncpg.connect(host=proc.host, port=proc.port, user="postgres",
                                     database="app")
        try:
            own = await conn.prepare(f"select $1::int * {n + 2}")
            total = 0
            for i in range(300):
                assert await own.fetchval(i) == i * (n + 2)
                shared = await conn.fetchval("select $1::int + $2::int", i, n)
                assert shared == i + n
                total += 1
            async with conn.transaction():
                await conn.execute("insert into pitems values ($1, $2)", n, f"t{n}")
                assert await conn.fetchval("select v from pitems where id = $1", n) == f"t{n}"
            return total
        finally:
            await conn.close()

    async def main() -> list[int]:
        return await asyncio.gather(*(task(n) for n in range(50)))

    assert asyncio.run(main()) == [300] * 50
    assert pg.sql("select count(*) from pitems") == "50"
    assert pooler_backends(pg, since) <= 2


def test_asyncpg_api_surface(pg: PgCluster, pooler: PoolerFactory) -> None:
    pg.sql("drop table if exists precs; create table precs(a int, b text)")
    proc = start(pooler, pool_size=1)

    async def main() -> None:
        conn = await asyncpg.connect(host=proc.host, port=proc.port, user="postgres",
                                     database="app")
        try:
            stmt = await conn.prepare("select $1::text || '!' as s")
            assert [r["s"] for r in await stmt.fetch("hi")] == ["hi!"]
            await conn.executemany("insert into precs values ($1, $2)",
                                   [(i, str(i)) for i in range(100)])
            await conn.copy_records_to_table("precs", records=[(1000, "x"), (1001, "y")])
            rows = await conn.fetch("select count(*), max(a) from precs where a > $1", -1)
            assert tuple(rows[0]) == (102, 1001)
        finally:
            await conn.close()

    asyncio.run(main())


def test_unnamed_statement_errors_leave_the_server_clean(pg: PgCluster,
                                                         pooler: PoolerFactory) -> None:
    """Extended protocol on the unnamed statement goes untagged: an error in it, alone, in a
    transaction or in a pipeline, must still end at its Sync and give the one server back."""
    proc = start(pooler, pool_size=1, query_wait_timeout=10)
    a = psycopg.connect(proc.dsn("postgres"), autocommit=True)
    b = psycopg.connect(proc.dsn("postgres"), autocommit=True)
    try:
        for round_ in range(3):
            with pytest.raises(psycopg.errors.DivisionByZero):
                a.execute("select 1 / %s::int", (0,))
            assert b.execute("select %s::int + 1", (round_,)).fetchone() == (round_ + 1,)
            with pytest.raises(psycopg.errors.DivisionByZero), a.transaction():
                a.execute("select %s::int", (1,))
                a.execute("select 1 / %s::int", (0,))
            assert b.execute("select %s::text", ("b",)).fetchone() == ("b",)
            with pytest.raises(psycopg.errors.DivisionByZero), a.pipeline():
                a.execute("select %s::int", (1,))
                a.execute("select 1 / %s::int", (0,))
                a.execute("select %s::int", (2,))
            assert a.execute("select %s::int * 2", (21,)).fetchone() == (42,)
            assert b.execute("select %s::int * 3", (round_,)).fetchone() == (round_ * 3,)
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("pipeline", [False, True])
def test_psycopg_always_prepare_sync(pg: PgCluster, pooler: PoolerFactory,
                                     pipeline: bool) -> None:
    proc = start(pooler, pool_size=1)
    conns = [psycopg.connect(proc.dsn("postgres"), autocommit=True, prepare_threshold=0)
             for _ in range(4)]
    try:
        for round_ in range(20):
            for n, conn in enumerate(conns):
                if pipeline:
                    with conn.pipeline():
                        curs = [conn.execute("select %s::int * %s::int", (round_, n)),
                                conn.execute("select %s::text", (f"c{n}",))]
                    assert curs[0].fetchone() == (round_ * n,)
                    assert curs[1].fetchone() == (f"c{n}",)
                else:
                    assert conn.execute("select %s::int * %s::int",
                                        (round_, n)).fetchone() == (round_ * n,)
    finally:
        for conn in conns:
            conn.close()


def test_psycopg_always_prepare_async(pg: PgCluster, pooler: PoolerFactory) -> None:
    proc = start(pooler, pool_size=2)

    async def worker(n: int) -> None:
        async with await psycopg.AsyncConnection.connect(proc.dsn("postgres"),
                                                         prepare_threshold=0) as conn:
            for i in range(50):
                async with conn.transaction():
                    cur = await conn.execute("select %s::int + %s::int", (n, i))
                    assert await cur.fetchone() == (n + i,)
            async with conn.pipeline():
                curs = [await conn.execute("select %s::int", (i,)) for i in range(10)]
            for i, c in enumerate(curs):
                assert await c.fetchone() == (i,)

    async def main() -> None:
        await asyncio.gather(*(worker(n) for n in range(10)))

    asyncio.run(main())


def test_error_at_commit_keeps_statements_working(pg: PgCluster, pooler: PoolerFactory) -> None:
    """A deferred constraint fails at the commit a Sync (or COMMIT) performs: the error comes
    while nothing else is pending, and the next batches must still find their statements."""
    pg.sql("drop table if exists pdefer; "
           "create table pdefer(x int unique deferrable initially deferred)")
    proc = start(pooler, pool_size=1, query_wait_timeout=10)
    a = psycopg.connect(proc.dsn("postgres"), autocommit=True, prepare_threshold=0)
    b = psycopg.connect(proc.dsn("postgres"), autocommit=True, prepare_threshold=0)
    insert = "insert into pdefer values (%s)"
    try:
        a.execute(insert, (1,))
        for round_ in range(3):
            # Autocommit: Bind, Execute, Sync; the implicit commit at Sync fails.
            with pytest.raises(psycopg.errors.UniqueViolation):
                a.execute(insert, (1,))
            a.execute(insert, (10 + round_,))
            assert a.execute("select count(*) from pdefer where x > %s",
                             (0,)).fetchone() == (2 + round_,)
            assert b.execute("select %s::int * 2", (round_,)).fetchone() == (round_ * 2,)
        # In a transaction block the failure comes at COMMIT.
        with pytest.raises(psycopg.errors.UniqueViolation), a.transaction():
            a.execute(insert, (1,))
        a.execute(insert, (20,))
        assert a.execute("select max(x) from pdefer where x > %s", (0,)).fetchone() == (20,)
        assert b.execute("select count(*) from pdefer where x > %s", (0,)).fetchone() == (5,)
    finally:
        a.close()
        b.close()
    assert pg.sql("select string_agg(x::text, ',' order by x) from pdefer") == "1,10,11,12,20"


def _msg(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def _read_until_ready(sock: socket.socket) -> list[bytes]:
    """The types of the messages up to and including ReadyForQuery."""
    buf = b""
    kinds: list[bytes] = []
    while True:
        while len(buf) >= 5 and len(buf) >= 1 + struct.unpack_from("!i", buf, 1)[0]:
            end = 1 + struct.unpack_from("!i", buf, 1)[0]
            kinds.append(buf[:1])
            if buf[:1] == b"Z":
                assert end == len(buf), "nothing may follow ReadyForQuery here"
                return kinds
            buf = buf[end:]
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {kinds}"
        buf += chunk


def _raw_login(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    body = struct.pack("!i", 196608) + b"user\0postgres\0database\0app\0\0"
    sock.sendall(struct.pack("!i", len(body) + 4) + body)
    assert b"E" not in _read_until_ready(sock)
    return sock


@pytest.mark.parametrize("stray", [
    _msg(b"H"),  # psycopg's pipeline sends Flush after Sync; it may come in its own chunk
    _msg(b"c"),  # CopyDone left over from a COPY the server already ended with an error
    _msg(b"d", b"1\n") + _msg(b"d", b"2\n") + _msg(b"c"),
])
def test_message_without_reply_after_release_links_no_server(
        pg: PgCluster, pooler: PoolerFactory, stray: bytes) -> None:
    """A client whose server went back to the pool sends messages the server never answers.

    Nothing would ever end such a link, so the client must not take a server for them: with
    one server, every other client would wait for it until query_wait_timeout.
    """
    proc = start(pooler, pool_size=1, query_wait_timeout=3)
    a = _raw_login(proc.port)
    other = psycopg.connect(proc.dsn("postgres"), autocommit=True)
    try:
        a.sendall(_msg(b"P", b"s1\0select 1\0\0\0") + _msg(b"B", b"\0s1\0\0\0\0\0\0\0")
                  + _msg(b"E", b"\0\0\0\0\0") + _msg(b"S"))
        assert _read_until_ready(a) == [b"1", b"2", b"D", b"C", b"Z"]
        # The server was released with that ReadyForQuery; the stray bytes come alone.
        a.sendall(stray)
        time.sleep(0.2)
        for i in range(3):
            assert other.execute("select %s::int", (i,)).fetchone() == (i,)
        a.sendall(_msg(b"B", b"\0s1\0\0\0\0\0\0\0") + _msg(b"E", b"\0\0\0\0\0")
                  + _msg(b"S"))
        assert _read_until_ready(a) == [b"2", b"D", b"C", b"Z"]
        assert other.execute("select 'still served'").fetchone() == ("still served",)
    finally:
        a.close()
        other.close()


@pytest.fixture(scope="module")
def bench_tables(pg: PgCluster) -> None:
    rc, _out, err = run_pgbench(["-i", "-s", "1", "-q", "-h", pg.socket_dir, "-p",
                                 str(pg.port), "-U", "postgres", "app"])
    assert rc == 0, err


@pytest.mark.parametrize("script", [["-S"], []])
def test_pgbench_prepared(pg: PgCluster, pooler: PoolerFactory, bench_tables: None,
                          script: list[str]) -> None:
    """pgbench -M prepared -c 20 -j 2 over a pool of 4: no failed transaction."""
    proc = start(pooler, pool_size=4, max_client_conn=100)
    rc, out, err = run_pgbench([*script, "-M", "prepared", "-c", "20", "-j", "2", "-t", "100",
                                "-h", proc.host, "-p", str(proc.port), "-U", "postgres",
                                "app"])
    result = parse_pgbench(out, err)
    assert rc == 0, err
    assert result.failed == 0 and result.aborted_clients == 0
    assert result.transactions == 2000


def low(proc_dsn: str) -> pq.PGconn:
    conn = pq.PGconn.connect(proc_dsn.encode())
    assert conn.status == pq.ConnStatus.OK, conn.error_message
    return conn


def test_duplicate_and_unknown_names(pg: PgCluster, pooler: PoolerFactory) -> None:
    proc = start(pooler, pool_size=1)
    conn = low(proc.dsn("postgres"))
    try:
        assert conn.prepare(b"s1", b"select 1").status == pq.ExecStatus.COMMAND_OK
        dup = conn.prepare(b"s1", b"select 2")
        assert dup.status == pq.ExecStatus.FATAL_ERROR
        assert dup.error_field(pq.DiagnosticField.SQLSTATE) == b"42P05"
        assert b'prepared statement "s1" already exists' in (dup.error_message or b"")
        unknown = conn.exec_prepared(b"nope", [])
        assert unknown.error_field(pq.DiagnosticField.SQLSTATE) == b"26000"
        described = conn.describe_prepared(b"nope")
        assert described.error_field(pq.DiagnosticField.SQLSTATE) == b"26000"
        # The connection is still fine and s1 still means "select 1".
        assert conn.exec_prepared(b"s1", []).get_value(0, 0) == b"1"
        # Inside a transaction the error aborts it, as on a direct connection.
        conn.exec_(b"begin")
        assert conn.prepare(b"s1", b"select 3").status == pq.ExecStatus.FATAL_ERROR
        assert conn.transaction_status == pq.TransactionStatus.INERROR
        conn.exec_(b"rollback")
        assert conn.transaction_status == pq.TransactionStatus.IDLE
        # A Parse that fails registers nothing.
        bad = conn.prepare(b"s2", b"select from nowhere_at_all")
        assert bad.status == pq.ExecStatus.FATAL_ERROR
        assert conn.exec_prepared(b"s2", []).error_field(
            pq.DiagnosticField.SQLSTATE) == b"26000"
        assert conn.prepare(b"s2", b"select 22").status == pq.ExecStatus.COMMAND_OK
        assert conn.exec_prepared(b"s2", []).get_value(0, 0) == b"22"
    finally:
        conn.finish()


def test_close_releases_the_name(pg: PgCluster, pooler: PoolerFactory) -> None:
    proc = start(pooler, pool_size=1)
    conn = low(proc.dsn("postgres"))
    try:
        assert conn.prepare(b"c1", b"select 'first'").status == pq.ExecStatus.COMMAND_OK
        assert conn.close_prepared(b"c1").status == pq.ExecStatus.COMMAND_OK
        assert conn.exec_prepared(b"c1", []).error_field(
            pq.DiagnosticField.SQLSTATE) == b"26000"
        assert conn.prepare(b"c1", b"select 'second'").status == pq.ExecStatus.COMMAND_OK
        assert conn.exec_prepared(b"c1", []).get_value(0, 0) == b"second"
        # Closing an unknown name is not an error, as in PostgreSQL.
        assert conn.close_prepared(b"never").status == pq.ExecStatus.COMMAND_OK
    finally:
        conn.finish()


@pytest.mark.parametrize("command", [b"DISCARD ALL", b"DEALLOCATE ALL", b"deallocate prepare all"])
def test_discard_and_deallocate_all_clear_client_statements(pg: PgCluster, pooler: PoolerFactory,
                                                            command: bytes) -> None:
    proc = start(pooler, pool_size=1)
    conn = low(proc.dsn("postgres"))
    other = low(proc.dsn("postgres"))
    try:
        assert conn.prepare(b"d1", b"select 'x'").status == pq.ExecStatus.COMMAND_OK
        assert other.prepare(b"o1", b"select 'o'").status == pq.ExecStatus.COMMAND_OK
        assert conn.exec_(command).status == pq.ExecStatus.COMMAND_OK
        assert conn.exec_prepared(b"d1", []).error_field(
            pq.DiagnosticField.SQLSTATE) == b"26000"
        # The other client's statements survive the server losing them.
        assert other.exec_prepared(b"o1", []).get_value(0, 0) == b"o"
        assert conn.prepare(b"d1", b"select 'y'").status == pq.ExecStatus.COMMAND_OK
        assert conn.exec_prepared(b"d1", []).get_value(0, 0) == b"y"
    finally:
        conn.finish()
        other.finish()


def test_discard_all_inside_transaction_fails_and_keeps_statements(
        pg: PgCluster, pooler: PoolerFactory) -> None:
    proc = start(pooler, pool_size=1)
    conn = low(proc.dsn("postgres"))
    other = low(proc.dsn("postgres"))
    try:
        assert other.prepare(b"o1", b"select 'o'").status == pq.ExecStatus.COMMAND_OK
        conn.exec_(b"begin")
        failed = conn.exec_(b"discard all")
        assert failed.status == pq.ExecStatus.FATAL_ERROR  # not allowed in a transaction
        conn.exec_(b"rollback")
        assert other.exec_prepared(b"o1", []).get_value(0, 0) == b"o"
    finally:
        conn.finish()
        other.finish()


def test_eviction_keeps_at_most_the_limit(pg: PgCluster, pooler: PoolerFactory) -> None:
    proc = start(pooler, pool_size=1, max_prepared_statements=3)
    conn = low(proc.dsn("postgres"))
    try:
        for i in range(10):
            assert conn.prepare(f"e{i}".encode(), f"select {i}".encode()).status == \
                pq.ExecStatus.COMMAND_OK
        for _ in range(3):
            for i in range(10):
                res = conn.exec_prepared(f"e{i}".encode(), [])
                assert res.get_value(0, 0) == str(i).encode(), res.error_message
        count = conn.exec_(b"select count(*) from pg_prepared_statements")
        assert int(count.get_value(0, 0) or b"0") <= 3
    finally:
        conn.finish()


def test_schema_change_fails_the_old_statement(pg: PgCluster, pooler: PoolerFactory) -> None:
    """0A000 "cached plan must not change result type" at every use of the statement, as
    PostgreSQL says it; a statement parsed after the change sees the new column."""
    pg.sql("drop table if exists evolving; create table evolving(a int); "
           "insert into evolving values (1)")
    proc = start(pooler, pool_size=1)
    conn = low(proc.dsn("postgres"))
    try:
        assert conn.prepare(b"sel", b"select * from evolving").status == pq.ExecStatus.COMMAND_OK
        assert conn.exec_prepared(b"sel", []).nfields == 1
        pg.sql("alter table evolving add column b text default 'b'")
        for _ in range(2):
            failed = conn.exec_prepared(b"sel", [])
            assert failed.error_field(pq.DiagnosticField.SQLSTATE) == b"0A000"
        assert conn.prepare(b"sel2", b"select * from evolving").status == \
            pq.ExecStatus.COMMAND_OK
        second = conn.exec_prepared(b"sel2", [])
        assert second.status == pq.ExecStatus.TUPLES_OK, second.error_message
        assert second.nfields == 2 and second.get_value(0, 1) == b"b"
    finally:
        conn.finish()


def test_statements_follow_clients_across_servers(pg: PgCluster, pooler: PoolerFactory) -> None:
    """A statement prepared on one server is prepared on demand on another."""
    proc = start(pooler, pool_size=2, server_round_robin=1, min_pool_size=2)
    conn = low(proc.dsn("postgres"))
    try:
        assert conn.prepare(b"who", b"select pg_backend_pid()").status == \
            pq.ExecStatus.COMMAND_OK
        deadline = time.monotonic() + 5
        while pg.connections(user="postgres", dbname="app") < 2:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        pids = set()
        for _ in range(10):
            res = conn.exec_prepared(b"who", [])
            assert res.status == pq.ExecStatus.TUPLES_OK, res.error_message
            pids.add(res.get_value(0, 0))
        assert len(pids) == 2
    finally:
        conn.finish()


def test_sql_level_prepare_execute_deallocate(pg: PgCluster, pooler: PoolerFactory) -> None:
    """Beyond PgBouncer: SQL PREPARE/EXECUTE/DEALLOCATE in transaction mode, per client."""
    proc = start(pooler, pool_size=2, server_round_robin=1)
    a = low(proc.dsn("postgres"))
    b = low(proc.dsn("postgres"))
    c = low(proc.dsn("postgres"))
    try:
        assert a.exec_(b"PREPARE foo (int) AS select $1 * 10").status == pq.ExecStatus.COMMAND_OK
        assert b.exec_(b"prepare foo (int) as select $1 * 100").status == pq.ExecStatus.COMMAND_OK
        for i in range(6):  # round robin: every EXECUTE may land on the other server
            assert a.exec_(f"EXECUTE foo({i})".encode()).get_value(0, 0) == str(i * 10).encode()
            assert b.exec_(f"execute foo({i})".encode()).get_value(0, 0) == str(i * 100).encode()
        unknown = c.exec_(b"EXECUTE foo(1)")
        assert unknown.error_field(pq.DiagnosticField.SQLSTATE) == b"26000"
        dup = a.exec_(b"PREPARE foo AS select 1")
        assert dup.error_field(pq.DiagnosticField.SQLSTATE) == b"42P05"
        assert b'prepared statement "foo" already exists' in (dup.error_message or b"")
        assert a.exec_(b"DEALLOCATE foo").status == pq.ExecStatus.COMMAND_OK
        assert a.exec_(b"EXECUTE foo(1)").error_field(pq.DiagnosticField.SQLSTATE) == b"26000"
        assert b.exec_(b"EXECUTE foo(7)").get_value(0, 0) == b"700"
        # A failing PREPARE registers nothing; inside a transaction EXECUTE works as well.
        assert a.exec_(b"PREPARE bad AS select from nowhere_at_all").status == \
            pq.ExecStatus.FATAL_ERROR
        assert a.exec_(b"EXECUTE bad").error_field(pq.DiagnosticField.SQLSTATE) == b"26000"
        assert a.exec_(b"PREPARE good AS select 'g'").status == pq.ExecStatus.COMMAND_OK
        a.exec_(b"BEGIN")
        assert a.exec_(b"EXECUTE good").get_value(0, 0) == b"g"
        a.exec_(b"COMMIT")
        a.exec_(b"DEALLOCATE ALL")
        assert a.exec_(b"EXECUTE good").error_field(pq.DiagnosticField.SQLSTATE) == b"26000"
    finally:
        for conn in (a, b, c):
            conn.finish()


def test_prepared_rollback_in_a_failed_transaction(pg: PgCluster, pooler: PoolerFactory) -> None:
    """psycopg prepares ROLLBACK after five uses, often inside a failed transaction. When the
    server already has the text (another client prepared it), PostgreSQL still parses a
    ROLLBACK in a failed transaction, so the pooler's answer must be a success too."""
    proc = start(pooler, pool_size=1)
    dsn = proc.dsn("scram_user", "scram_pass")
    with psycopg.connect(dsn, autocommit=True) as first, \
            psycopg.connect(dsn, autocommit=True) as second:
        result = first.pgconn.prepare(b"theirs", b"rollback")
        assert result.status == pq.ExecStatus.COMMAND_OK, result.error_message
        second.execute("begin")
        with pytest.raises(psycopg.errors.DivisionByZero):
            second.execute("select 1/0")
        result = second.pgconn.prepare(b"mine", b"rollback")
        assert result.status == pq.ExecStatus.COMMAND_OK, result.error_message
        result = second.pgconn.exec_prepared(b"mine", [])
        assert result.status == pq.ExecStatus.COMMAND_OK, result.error_message
        assert second.info.transaction_status == pq.TransactionStatus.IDLE
        assert second.execute("select 1").fetchone() == (1,)
