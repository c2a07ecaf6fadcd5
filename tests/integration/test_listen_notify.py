"""LISTEN and NOTIFY in transaction mode: notifications reach the clients that listen, exactly
once, with the sender's real pid, when PostgreSQL would deliver them; the server that ran a
LISTEN goes back to the pool listening on nothing; UNLISTEN, DISCARD ALL and disconnecting
clean up. Real PostgreSQL, psycopg and asyncpg."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import asyncpg
import psycopg
import pytest
from poolcase import start

from support import PgCluster, PoolerFactory, PoolerProc

USER = "postgres"
PASSWORD = "postgres"


@pytest.fixture
def proc(pooler: PoolerFactory) -> PoolerProc:
    return start(pooler, pool_size=2)


def connect(proc: PoolerProc) -> psycopg.Connection:
    return psycopg.connect(proc.dsn(USER, PASSWORD), autocommit=True)


def received(conn: psycopg.Connection, timeout: float = 2.0, count: int | None = None
             ) -> list[tuple[str, str, int]]:
    """The notifications that arrive within ``timeout`` (or until ``count`` came)."""
    out = []
    for n in conn.notifies(timeout=timeout, stop_after=count):
        out.append((n.channel, n.payload, n.pid))
    return out


@pytest.fixture
def clients(proc: PoolerProc) -> Iterator[list[psycopg.Connection]]:
    conns = [connect(proc) for _ in range(4)]
    yield conns
    for c in conns:
        c.close()


def test_a_listener_gets_what_others_send_with_the_senders_pid(clients) -> None:  # type: ignore[no-untyped-def]
    listener, sender, bystander, _ = clients
    listener.execute("LISTEN jobs")
    bystander.execute("select 1")
    sender.execute("notify jobs, 'one'")
    # The pid that comes with a notification is that of the server the NOTIFY ran on.
    pid = sender.execute("select pg_backend_pid(), pg_notify('jobs', 'two')").fetchone()
    got = received(listener, count=2)
    assert [(c, p) for c, p, _ in got] == [("jobs", "one"), ("jobs", "two")]
    assert pid is not None and got[1][2] == pid[0]
    assert received(bystander, timeout=0.5) == []
    assert received(sender, timeout=0.2) == []


def test_the_server_that_ran_listen_is_clean_for_the_next_client(proc: PoolerProc,
                                                                   pg: PgCluster) -> None:
    """Pool of two: every server a listener used goes to others; none listens any more, and
    a notification reaches only the client that asked, once."""
    listener = connect(proc)
    others = [connect(proc) for _ in range(5)]
    try:
        listener.execute("LISTEN news")
        for _ in range(3):
            for other in others:
                chans = other.execute("select count(*) from pg_listening_channels()").fetchone()
                assert chans == (0,)
        pg.sql("notify news, 'hello'", "app")
        assert [(c, p) for c, p, _ in received(listener, count=1)] == [("news", "hello")]
        assert received(listener, timeout=0.5) == []  # once, not once per server
        for other in others:
            assert received(other, timeout=0.1) == []
    finally:
        listener.close()
        for other in others:
            other.close()


def test_delivery_waits_for_the_end_of_the_transaction(clients, pg: PgCluster) -> None:  # type: ignore[no-untyped-def]
    listener = clients[0]
    listener.execute("LISTEN ticks")
    listener.execute("begin")
    listener.execute("select 1")
    pg.sql("notify ticks, 'in-transaction'", "app")
    time.sleep(0.3)
    assert received(listener, timeout=0.2) == []  # PostgreSQL holds it until the end too
    listener.execute("commit")
    assert [p for _, p, _ in received(listener, count=1)] == ["in-transaction"]


def test_rolled_back_listen_and_unlisten(clients, pg: PgCluster) -> None:  # type: ignore[no-untyped-def]
    a, b, _, _ = clients
    a.execute("begin")
    a.execute('LISTEN "Mixed Case"')
    a.execute("rollback")
    pg.sql("""notify "Mixed Case", 'lost'""", "app")
    assert received(a, timeout=0.5) == []
    a.execute('LISTEN "Mixed Case"')
    b.execute("LISTEN other")
    pg.sql("""select pg_notify('Mixed Case', 'x'), pg_notify('other', 'y')""", "app")
    assert [(c, p) for c, p, _ in received(a, count=1)] == [("Mixed Case", "x")]
    assert [(c, p) for c, p, _ in received(b, count=1)] == [("other", "y")]
    a.execute('UNLISTEN "Mixed Case"')
    b.execute("DISCARD ALL")
    pg.sql("""select pg_notify('Mixed Case', 'x'), pg_notify('other', 'y')""", "app")
    assert received(a, timeout=0.5) == []
    assert received(b, timeout=0.2) == []


def test_many_listeners_each_get_every_notification_once(proc: PoolerProc,
                                                         pg: PgCluster) -> None:
    listeners = [connect(proc) for _ in range(12)]
    try:
        for i, conn in enumerate(listeners):
            conn.execute(f"LISTEN ch{i % 3}")
            conn.execute("select 1")
        for n in range(5):
            pg.sql(f"select pg_notify('ch0', '{n}'), pg_notify('ch1', '{n}')", "app")
        for i, conn in enumerate(listeners):
            want = [] if i % 3 == 2 else [f"ch{i % 3}:{n}" for n in range(5)]
            got = [f"{c}:{p}" for c, p, _ in received(conn, count=len(want) or None,
                                                      timeout=2.0 if want else 0.3)]
            assert got == want
    finally:
        for conn in listeners:
            conn.close()


def test_a_listener_that_leaves_is_unsubscribed(proc: PoolerProc, pg: PgCluster) -> None:
    gone = connect(proc)
    gone.execute("LISTEN bye")
    gone.close()
    stays = connect(proc)
    try:
        stays.execute("LISTEN bye")
        pg.sql("notify bye, 'still here'", "app")
        assert [p for _, p, _ in received(stays, count=1)] == ["still here"]
        stays.execute("UNLISTEN *")
        # Nobody listens on the channel any more: the listening connection drops it too.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            listening = pg.sql(
                "select count(*) from pg_stat_activity where query ilike 'UNLISTEN%bye%'",
                "postgres")
            if listening == "1":
                break
            time.sleep(0.05)
        assert listening == "1"
    finally:
        stays.close()


def test_asyncpg_add_listener(proc: PoolerProc, pg: PgCluster) -> None:
    async def run() -> list[tuple[str, str]]:
        conn = await asyncpg.connect(host=proc.host, port=proc.port, user=USER,
                                     password=PASSWORD, database="app")
        got: list[tuple[str, str]] = []
        arrived = asyncio.Event()

        def on(_c: object, _pid: int, channel: str, payload: str) -> None:
            got.append((channel, payload))
            arrived.set()

        await conn.add_listener("events", on)
        await conn.fetchval("select 1")
        pg.sql("notify events, 'from asyncpg'", "app")
        await asyncio.wait_for(arrived.wait(), 3)
        await conn.remove_listener("events", on)
        await conn.close()
        return got

    assert asyncio.run(run()) == [("events", "from asyncpg")]
