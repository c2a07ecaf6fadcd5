"""Real drivers through the pooler: psycopg 3 (sync, async, pipeline, COPY) and asyncpg.

Each runs straight to the pooler and again through a proxy that splits every write, both
ways, into 1-byte pieces: the pooler must not depend on how the network cuts the bytes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import asyncpg
import psycopg
import pytest
from poolcase import pg_now, pooler_backends, start

from support import PgCluster, PoolerFactory, PoolerProc, libpq_dsn
from support.faults import FaultProxy

# Protocol-level named prepared statements in transaction mode are a later capability; until
# then psycopg is used as PgBouncer's users use it, with automatic preparing off.
NO_PREPARE = {"prepare_threshold": None}


class Route:
    """How a test's clients reach its pooler: straight, or through a 1-byte splitter."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.proxies: dict[int, FaultProxy] = {}

    def port(self, proc: PoolerProc) -> int:
        if self.kind == "direct":
            return proc.port
        proxy = self.proxies.get(proc.port)
        if proxy is None:
            proxy = self.proxies[proc.port] = FaultProxy(proc.port).start()
            proxy.upstream.split = proxy.downstream.split = 1
        return proxy.port

    def dsn(self, proc: PoolerProc, user: str = "postgres") -> str:
        return libpq_dsn(host=proc.host, port=self.port(proc), user=user, dbname="app")

    def close(self) -> None:
        for proxy in self.proxies.values():
            assert proxy.upstream.forwarded and proxy.downstream.forwarded
            proxy.close()


@pytest.fixture(params=["direct", "split"])
def route(request: pytest.FixtureRequest) -> Iterator[Route]:
    found = Route(request.param)
    yield found
    found.close()


@pytest.fixture
def items_table(pg: PgCluster) -> str:
    pg.sql("drop table if exists items; create table items(id int primary key, name text)")
    return "items"


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_psycopg_sync_transactions_and_copy(pg: PgCluster, pooler: PoolerFactory,
                                            items_table: str, mode: str, route: Route) -> None:
    proc = start(pooler, mode, pool_size=2)
    with psycopg.connect(route.dsn(proc), **NO_PREPARE) as conn:
        with conn.transaction():
            conn.execute("insert into items values (%s, %s)", (1, "one"))
            conn.execute("insert into items values (%s, %s)", (2, "two"))
        with conn.cursor() as cur:
            with cur.copy("copy items (id, name) from stdin") as copy:
                for i in range(3, 1003):
                    copy.write_row((i, f"item {i}"))
            conn.commit()
            rows = []
            with cur.copy("copy (select id, name from items order by id) to stdout") as copy:
                rows = list(copy.rows())
        assert len(rows) == 1002 and rows[0] == ("1", "one")
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("insert into items values (1, 'dup')")
        conn.rollback()
        assert conn.execute("select count(*) from items").fetchone() == (1002,)


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_psycopg_pipeline_mode(pg: PgCluster, pooler: PoolerFactory, items_table: str,
                               mode: str, route: Route) -> None:
    proc = start(pooler, mode, pool_size=1)
    with psycopg.connect(route.dsn(proc), autocommit=True, **NO_PREPARE) as conn:
        with conn.pipeline():
            cursors = [conn.execute("select %s::int * 2", (i,)) for i in range(50)]
        assert [c.fetchone() for c in cursors] == [(i * 2,) for i in range(50)]
        # An error in the middle of a pipeline: the batch up to its Sync is one implicit
        # transaction and is rolled back whole (as on a direct connection); later batches run.
        with pytest.raises(psycopg.errors.DivisionByZero), conn.pipeline():
            conn.execute("insert into items values (1, 'a')")
            conn.execute("select 1/0")
            conn.execute("insert into items values (2, 'b')")
        with conn.pipeline() as pipeline:
            conn.execute("insert into items values (3, 'c')")
            pipeline.sync()
            cur = conn.execute("select count(*) from items")
        assert cur.fetchone() == (1,)
    # The server went back clean: another client on the single server is not in a transaction.
    with psycopg.connect(route.dsn(proc), autocommit=True, **NO_PREPARE) as other:
        assert other.execute("select txid_current_if_assigned()").fetchone() == (None,)


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_psycopg_async(pg: PgCluster, pooler: PoolerFactory, items_table: str, mode: str,
                       route: Route) -> None:
    proc = start(pooler, mode, pool_size=3)
    dsn = route.dsn(proc)

    async def worker(n: int) -> int:
        async with await psycopg.AsyncConnection.connect(dsn, **NO_PREPARE) as conn:
            total = 0
            for i in range(20):
                async with conn.transaction():
                    cur = await conn.execute("select %s::int + %s::int", (n, i))
                    row = await cur.fetchone()
                    assert row is not None
                    total += row[0]
            async with conn.pipeline():
                curs = [await conn.execute("select %s::int", (i,)) for i in range(10)]
            for i, c in enumerate(curs):
                assert await c.fetchone() == (i,)
            async with conn.cursor() as cur, cur.copy("copy items from stdin") as copy:
                await copy.write_row((10_000 + n, f"w{n}"))
            await conn.commit()
            return total

    async def main() -> list[int]:
        return await asyncio.gather(*(worker(n) for n in range(12)))

    totals = asyncio.run(main())
    assert totals == [20 * n + sum(range(20)) for n in range(12)]
    assert pg.sql("select count(*) from items") == "12"


def test_asyncpg_session_mode(pg: PgCluster, pooler: PoolerFactory, items_table: str,
                              route: Route) -> None:
    proc = start(pooler, "session", pool_size=4)
    port = route.port(proc)

    async def main() -> None:
        pool = await asyncpg.create_pool(host=proc.host, port=port, user="postgres",
                                         database="app", min_size=2, max_size=4)
        try:
            async def job(i: int) -> None:
                async with pool.acquire() as conn:
                    stmt = await conn.prepare("select $1::int * 3")
                    for j in range(20):
                        assert await stmt.fetchval(i + j) == (i + j) * 3
                    async with conn.transaction():
                        await conn.execute("insert into items values ($1, $2)", i, f"n{i}")
                    rows = await conn.fetch("select id from items where id = $1", i)
                    assert [r["id"] for r in rows] == [i]

            await asyncio.gather(*(job(i) for i in range(30)))
            async with pool.acquire() as conn:
                await conn.executemany("insert into items values ($1, $2)",
                                       [(1000 + i, "m") for i in range(50)])
                await conn.copy_records_to_table("items", records=[(5000, "c"), (5001, "d")])
                assert await conn.fetchval("select count(*) from items") == 82
        finally:
            await pool.close()

    asyncio.run(main())


def test_asyncpg_transaction_mode_unprepared(pg: PgCluster, pooler: PoolerFactory,
                                             route: Route) -> None:
    """asyncpg without its statement cache works in transaction mode (before issue 3's work)."""
    proc = start(pooler, "transaction", pool_size=2)
    port = route.port(proc)

    async def main() -> None:
        conns = [await asyncpg.connect(host=proc.host, port=port, user="postgres",
                                       database="app", statement_cache_size=0)
                 for _ in range(10)]
        try:
            async def job(conn: asyncpg.Connection, n: int) -> None:
                for i in range(30):
                    assert await conn.fetchval("select $1::int + 1", n + i) == n + i + 1
            await asyncio.gather(*(job(c, n) for n, c in enumerate(conns)))
        finally:
            for c in conns:
                await c.close()

    asyncio.run(main())


def test_thousand_psycopg_clients_over_pool_of_twenty(pg: PgCluster,
                                                      pooler: PoolerFactory) -> None:
    """The issue's second check: 1,000 concurrent clients x 20 transactions, pool of 20."""
    pg.sql("drop table if exists hits; create table hits(client int, n int)")
    since = pg_now(pg)
    proc = start(pooler, pool_size=20, max_client_conn=1100)
    errors: list[BaseException] = []

    async def client(n: int) -> None:
        try:
            async with await psycopg.AsyncConnection.connect(proc.dsn("postgres"),
                                                                **NO_PREPARE) as conn:
                for i in range(20):
                    async with conn.transaction():
                        await conn.execute("insert into hits values (%s, %s)", (n, i))
        except BaseException as exc:  # collected and reported below
            errors.append(exc)

    async def main() -> None:
        # All 1,000 connect at once and stay connected while they run.
        await asyncio.gather(*(client(n) for n in range(1000)))

    asyncio.run(main())
    assert not errors, errors[:3]
    assert pg.sql("select count(*) from hits") == "20000"
    assert pooler_backends(pg, since) <= 20
