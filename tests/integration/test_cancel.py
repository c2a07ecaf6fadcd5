"""Cancel requests: they reach the query they were meant for, and never a later one.

A direct PostgreSQL closes a cancel connection only after the postmaster has signalled the
backend, so a client that waits for that close (asyncpg, libpq's PQcancel) knows that its next
query cannot be hit. The pooler keeps the same promise: the client's cancel connection is
closed only once the server's postmaster has the request, and a cancel whose query finished
before it could be delivered is dropped.

Some tests put a TCP proxy between the pooler and PostgreSQL that plays a slow postmaster (it
holds cancel requests back) or a cancel connection slow to open (it stops accepting, so new
connections wait for a SYN retransmission).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Awaitable, Iterator

import asyncpg
import psycopg
import pytest
from poolcase import start

from support import PgCluster, PoolerFactory, PoolerProc, wire
from support.proxy import PgProxy
from support.wire import query_result, send_query, wait_closed


def login(proc: PoolerProc) -> tuple[socket.socket, tuple[int, int]]:
    return wire.login(proc.host, proc.port)


def open_cancel(proc: PoolerProc, key: tuple[int, int]) -> socket.socket:
    return wire.open_cancel(proc.host, proc.port, key)


class Closed:
    """The time a socket's peer closed it, watched from a thread."""

    def __init__(self, sock: socket.socket) -> None:
        self.at: float | None = None
        self._thread = threading.Thread(target=self._run, args=(sock,), daemon=True)
        self._thread.start()

    def _run(self, sock: socket.socket) -> None:
        self.at = wait_closed(sock)

    def wait(self, timeout: float) -> float:
        self._thread.join(timeout)
        assert self.at is not None, "the cancel connection was not closed"
        return self.at


@pytest.fixture
def proxy(pg: PgCluster) -> Iterator[PgProxy]:
    found = PgProxy("127.0.0.1", pg.port)
    try:
        yield found
    finally:
        found.close()


def through(pooler: PoolerFactory, proxy: PgProxy, mode: str, **settings: object) -> PoolerProc:
    return start(pooler, mode, pool_size=1,
                 databases={"app": f"host=127.0.0.1 port={proxy.port} dbname=app"}, **settings)


# ---------------------------------------------------------------------- the tests


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_asyncpg_timeout_never_cancels_a_later_query(pooler: PoolerFactory, mode: str) -> None:
    """asyncpg's own timeout tests (test_timeout_02 and _05), repeated: a statement times out,
    asyncpg cancels it and waits for the cancel connection to close, then runs the next query.
    Neither the next query nor the next timed statement may be hit by a late cancel (one
    QueryCanceledError instead of a TimeoutError). Through a direct PostgreSQL none is."""
    proc = start(pooler, mode, pool_size=2)
    rounds = 30

    async def main() -> list[str]:
        conn = await asyncpg.connect(host=proc.host, port=proc.port, user="postgres",
                                     database="app")
        wrong: list[str] = []

        async def timed(call: str, run: Awaitable[object]) -> None:
            try:
                await run
                wrong.append(f"{call}: no timeout")
            except TimeoutError:
                pass
            except asyncpg.QueryCanceledError:
                wrong.append(f"{call}: cancelled before its own timeout")

        async def next_query(after: str) -> None:
            try:
                assert await conn.fetch("select 1") == [(1,)]
            except asyncpg.QueryCanceledError:
                wrong.append(f"select 1 after {after}: cancelled")

        try:
            st = await conn.prepare("select pg_sleep(10)")
            for _ in range(rounds):
                for name in ("fetch", "fetchrow", "fetchval"):
                    await timed(f"prepared {name}", getattr(st, name)(timeout=0.02))
                    await next_query(f"prepared {name}")
                await timed("fetch 1e-10", conn.fetch("select pg_sleep(1)", timeout=1e-10))
                await next_query("fetch 1e-10")
        finally:
            await conn.close()
        return wrong

    assert asyncio.run(main()) == []


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_cancel_connection_closes_after_the_postmaster_has_it(
        pooler: PoolerFactory, proxy: PgProxy, mode: str) -> None:
    """A slow postmaster: the client's cancel connection stays open until the server's cancel
    connection was closed by PostgreSQL, and the query is cancelled."""
    proxy.cancel_delay = 0.6
    proc = through(pooler, proxy, mode)
    sock, key = login(proc)
    with sock:
        send_query(sock, "select 1")
        assert query_result(sock) == ([[b"1"]], None)
        send_query(sock, "select pg_sleep(20)")
        time.sleep(0.3)
        sent = time.time()
        closed = Closed(open_cancel(proc, key))
        _, sqlstate = query_result(sock)
        done = time.time()
        assert sqlstate == "57014" and done - sent < 10
        at = closed.wait(10)
        assert len(proxy.delivered) == 1
        assert at >= proxy.delivered[0], "closed before PostgreSQL had the request"
        assert at - sent >= proxy.cancel_delay
        # The same connection goes on.
        send_query(sock, "select 2")
        assert query_result(sock) == ([[b"2"]], None)


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_cancel_after_the_query_finished_cancels_nothing(pooler: PoolerFactory,
                                                         mode: str) -> None:
    proc = start(pooler, mode, pool_size=1)
    sock, key = login(proc)
    send_query(sock, "select 1")
    assert query_result(sock) == ([[b"1"]], None)
    other, _ = login(proc)
    with sock, other:
        started = time.monotonic()
        wait_closed(open_cancel(proc, key))
        assert time.monotonic() - started < 2, "an ignored cancel is answered at once"
        # Neither this client's next query nor another one's on the same server is hit.
        send_query(sock, "select pg_sleep(0.5), 'mine'")
        assert query_result(sock) == ([[b"", b"mine"]], None)
        if mode == "transaction":
            send_query(other, "select pg_sleep(0.5), 'other'")
            assert query_result(other) == ([[b"", b"other"]], None)


def test_cancel_still_connecting_when_the_query_ends_is_dropped(
        pooler: PoolerFactory, proxy: PgProxy) -> None:
    """The cancel's connection to the postmaster is still being opened when the query ends and
    the server goes to another client: the cancel is dropped, the server is handed on at once,
    and nothing is sent when the connection opens at last, while the other client's query
    runs."""
    proc = through(pooler, proxy, "transaction")
    sock, key = login(proc)
    other, _ = login(proc)
    with sock, other:
        send_query(sock, "select 1")
        assert query_result(sock) == ([[b"1"]], None)  # the one server is open
        proxy.block_accepts()
        try:
            send_query(sock, "select pg_sleep(0.5), 'first'")
            t0 = time.time()
            time.sleep(0.1)
            closed = Closed(open_cancel(proc, key))
            time.sleep(0.1)
            send_query(other, "select pg_sleep(0.5), 'second'")  # waits for the one server
            assert query_result(sock) == ([[b"", b"first"]], None)
            first_done = time.time()
            # The dropped cancel is over as soon as its query is.
            assert closed.wait(5) - first_done < 1
            assert query_result(other) == ([[b"", b"second"]], None)
            assert time.time() - t0 < 1.8, "the server waited for the cancel's connection"
        finally:
            proxy.unblock_accepts()
        # The cancel's connection opens at the next SYN retransmission (3 s after its first
        # SYN): a query is running on the server by then and must not be hit.
        send_query(other, "select pg_sleep(3), 'third'")
        assert query_result(other) == ([[b"", b"third"]], None)
        deadline = time.monotonic() + 10
        while not proxy.silent and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proxy.silent >= 1 and proxy.received == []


def test_server_waits_for_a_cancel_in_flight(pooler: PoolerFactory, proxy: PgProxy) -> None:
    """The cancel is written but the postmaster has not done with it when the query ends: the
    server goes to the next client only after PostgreSQL closed the cancel connection."""
    proxy.cancel_delay = 1.0
    proc = through(pooler, proxy, "transaction")
    sock, key = login(proc)
    send_query(sock, "select 1")
    assert query_result(sock) == ([[b"1"]], None)
    other, _ = login(proc)
    with sock, other:
        send_query(sock, "select pg_sleep(0.5), 'first'")
        time.sleep(0.1)
        closed = Closed(open_cancel(proc, key))
        time.sleep(0.1)
        send_query(other, "select pg_sleep(1), extract(epoch from statement_timestamp())")
        # The cancel reached the proxy, not yet PostgreSQL, when the query finished.
        assert query_result(sock) == ([[b"", b"first"]], None)
        rows, sqlstate = query_result(other)
        assert sqlstate is None, "the next client's query was cancelled"
        assert len(proxy.delivered) == 1
        assert rows[0][1] is not None and float(rows[0][1]) >= proxy.delivered[0]
        assert closed.wait(5) >= proxy.delivered[0]
        # And the server is back in service.
        send_query(sock, "select 3")
        assert query_result(sock) == ([[b"3"]], None)


def test_psycopg_cancel_in_session_mode(pooler: PoolerFactory) -> None:
    """libpq's PQcancel waits for the cancel connection to close too."""
    proc = start(pooler, "session", pool_size=1)
    with psycopg.connect(proc.dsn("postgres"), autocommit=True) as conn:
        for _ in range(5):
            timer = threading.Timer(0.2, conn.cancel)
            timer.start()
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("select pg_sleep(10)")
            timer.join()
            assert conn.execute("select 1").fetchone() == (1,)
