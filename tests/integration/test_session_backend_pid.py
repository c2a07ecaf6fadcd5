"""Session mode names the client's real backend: BackendKeyData carries the pid of the server
the client keeps for its whole session, so ``pg_backend_pid()``, ``pg_terminate_backend()`` and
the pid of a notification match what the driver was told (when the pool can give a server at
login; a full pool does not make the login wait). The secret stays the pooler's own:
cancelling through the pooler works, the key reaches no one else's query. Transaction mode
(and session mode with session_real_pid off) keeps pooler-made pids, as a pid there would name
a server the client does not keep."""

from __future__ import annotations

import asyncio
import threading
import time

import asyncpg
import psycopg
import pytest
from poolcase import USERLIST, start

from support import PgCluster, PoolerFactory, PoolerProc

USER = "postgres"
PASSWORD = "postgres"


def connect(proc: PoolerProc) -> psycopg.Connection:
    return psycopg.connect(proc.dsn(USER, PASSWORD), autocommit=True)


def own_pid(conn: psycopg.Connection) -> int:
    row = conn.execute("select pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def session(pooler: PoolerFactory) -> PoolerProc:
    return start(pooler, "session", pool_size=3)


def test_the_driver_is_told_its_backends_pid(session: PoolerProc) -> None:
    conns = [connect(session) for _ in range(3)]
    try:
        told = [c.info.backend_pid for c in conns]
        assert told == [own_pid(c) for c in conns]
        assert len(set(told)) == 3
    finally:
        for c in conns:
            c.close()


def test_terminating_that_pid_ends_the_client_with_the_servers_error(
        session: PoolerProc, pg: PgCluster) -> None:
    victim = connect(session)
    bystander = connect(session)
    try:
        pid = victim.info.backend_pid
        assert pg.sql(f"select pg_terminate_backend({pid})", "postgres") == "t"
        with pytest.raises(psycopg.errors.AdminShutdown):
            victim.execute("select 1")
        assert victim.closed or victim.broken
        assert own_pid(bystander) == bystander.info.backend_pid
    finally:
        victim.close()
        bystander.close()


def test_cancel_through_the_pooler_still_works(session: PoolerProc) -> None:
    conn = connect(session)
    try:
        timer = threading.Timer(0.3, conn.cancel)
        timer.start()
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("select pg_sleep(20)")
        assert time.monotonic() - started < 10
        timer.join()
        assert conn.execute("select 41 + 1").fetchone() == (42,)
    finally:
        conn.close()


def test_a_notification_names_the_pid_the_sender_was_told(session: PoolerProc) -> None:
    listener = connect(session)
    sender = connect(session)
    try:
        listener.execute("LISTEN pids")
        sender.execute("NOTIFY pids, 'x'")
        got = list(listener.notifies(timeout=5, stop_after=1))
        assert [(n.channel, n.payload, n.pid) for n in got] == [
            ("pids", "x", sender.info.backend_pid)]
    finally:
        listener.close()
        sender.close()


def test_asyncpg_sees_the_same_pid(session: PoolerProc) -> None:
    async def run() -> tuple[int, int]:
        conn = await asyncpg.connect(host=session.host, port=session.port, user=USER,
                                     password=PASSWORD, database="app")
        try:
            return conn.get_server_pid(), int(await conn.fetchval("select pg_backend_pid()"))
        finally:
            await conn.close()

    told, actual = asyncio.run(run())
    assert told == actual


def test_a_login_never_waits_for_a_server(pooler: PoolerFactory) -> None:
    """With the pool full the second client logs in at once, with a pid of the pooler's
    (its server is not known yet), and gets the first one's server when that one leaves."""
    proc = start(pooler, "session", pool_size=1)
    first = connect(proc)
    pid = first.info.backend_pid
    assert own_pid(first) == pid
    second = connect(proc)
    try:
        assert second.info.backend_pid != pid
        first.close()
        assert own_pid(second) == pid
    finally:
        second.close()


@pytest.mark.parametrize("mode,real_pid", [("transaction", "1"), ("session", "0")])
def test_elsewhere_the_pid_is_the_poolers_own(pooler: PoolerFactory, mode: str,
                                              real_pid: str) -> None:
    proc = pooler({"databases": pooler.databases(),
                   "pgbouncer": {"pool_mode": mode, "auth_type": "trust"},
                   "pgusher": {"session_real_pid": real_pid}}, USERLIST)
    conn = connect(proc)
    try:
        assert conn.info.backend_pid != own_pid(conn)
    finally:
        conn.close()
