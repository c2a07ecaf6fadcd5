"""The server going away and coming back; the pooler keeps serving."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from poolcase import start

from support import PgCluster, PoolerFactory, PoolerProc, wire
from support.faults import FaultProxy
from support.proxy import PgProxy


def query_ok(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
            return conn.execute("select 1").fetchone() == (1,)
    except psycopg.OperationalError:
        return False


def test_server_down_gives_clear_error_then_recovers(pg: PgCluster,
                                                     pooler: PoolerFactory) -> None:
    """Work in flight fails at once. A query that was not yet sent waits for the server, up to
    query_wait_timeout. Once logins have failed for server_login_retry, new clients are told
    at once. When the server is back, so is the pooler."""
    proc = start(pooler, pool_size=2, server_login_retry=0.5, query_wait_timeout=2)
    busy = psycopg.connect(proc.dsn("postgres"), autocommit=True)
    idle = psycopg.connect(proc.dsn("postgres"), autocommit=True)
    assert idle.execute("select 1").fetchone() == (1,)
    failures: list[tuple[float, str]] = []

    def in_flight() -> None:
        try:
            busy.execute("select pg_sleep(60)")
        except psycopg.OperationalError as exc:
            failures.append((time.monotonic(), str(exc)))

    sleeper = threading.Thread(target=in_flight)
    sleeper.start()
    deadline = time.monotonic() + 10
    while pg.sql("select count(*) from pg_stat_activity where query = 'select pg_sleep(60)'",
                 "postgres") != "1":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    stopped = time.monotonic()
    pg.stop()
    try:
        sleeper.join(10)
        assert failures and failures[0][0] - stopped < 10
        assert ("terminating connection" in failures[0][1]
                or "server conn crashed?" in failures[0][1])
        busy.close()
        # Nothing of this client's was in flight: it waits, and a server that does not come
        # back ends the wait at query_wait_timeout, not at once and not never.
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError, match="query_wait_timeout"):
            idle.execute("select 1")
        assert 1.5 < time.monotonic() - started < 10
        idle.close()
        # Logins have failed for longer than server_login_retry: new clients are told at once.
        started = time.monotonic()
        with (pytest.raises(psycopg.OperationalError,
                            match=r"server login has been failing, cached error: .+ "
                                  r"\(server_login_retry\)"),
              psycopg.connect(proc.dsn("postgres"), connect_timeout=10) as c):
            c.execute("select 1")
        assert time.monotonic() - started < 2
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
    """A server that cannot be reached keeps its clients queued (as PgBouncer) while the
    pooler tries again; they are refused at query_wait_timeout. Once the failures are older
    than server_login_retry, new clients are told at once, with the cached error."""
    from support import free_port

    dead = free_port()
    proc = start(pooler, query_wait_timeout=2,
                 databases={"app": f"host=127.0.0.1 port={dead} dbname=app",
                            "live": f"host=127.0.0.1 port={pg.port} dbname=app"})
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError, match="query_wait_timeout"):
        psycopg.connect(proc.dsn("postgres", dbname="app"), connect_timeout=10)
    assert 1.5 < time.monotonic() - started < 5
    assert "closing because: connect failed" in proc.log_text()
    # Within server_login_retry the answer is immediate and worded as PgBouncer words it.
    with pytest.raises(psycopg.OperationalError,
                       match=r"server login has been failing, cached error: pgusher cannot "
                             r"connect to server \(server_login_retry\)"):
        psycopg.connect(proc.dsn("postgres", dbname="app"), connect_timeout=10)
    # Other databases are unaffected.
    assert query_ok(proc.dsn("postgres", dbname="live"))


# ---------------------------------------------------------------------- a backend that dies


def terminate(pg: PgCluster, pid: int | str) -> None:
    assert pg.sql(f"select pg_terminate_backend({pid})", "postgres") == "t"


def read_to_end(sock: socket.socket, within: float) -> list[tuple[float, bytes, bytes]]:
    """Messages until the pooler closes the connection: (seconds, type, body); fails after
    ``within`` seconds."""
    sock.settimeout(within)
    started = time.monotonic()
    got = []
    while True:
        try:
            kind, body = wire.read_message(sock)
        except ConnectionError:
            return got
        except TimeoutError:
            raise AssertionError(f"still connected after {within} s; got {got}") from None
        got.append((time.monotonic() - started, kind, body))


@pytest.mark.parametrize("in_transaction", [False, True])
def test_session_backend_terminated_client_gets_the_error(pg: PgCluster, pooler: PoolerFactory,
                                                          in_transaction: bool) -> None:
    """The shape of the report: session state (settings, a temp table, a prepared statement,
    an open transaction), then pg_terminate_backend. What a direct connection shows: the
    server's own FATAL, then a closed connection."""
    proc = start(pooler, "session", pool_size=2)
    conn = psycopg.connect(proc.dsn("postgres"), autocommit=True)
    conn.execute("SET application_name = 'victim'; SET work_mem = '7MB'")
    conn.execute("CREATE TEMP TABLE victim_t(a int)")
    conn.execute("select 1", prepare=True)
    if in_transaction:
        conn.execute("BEGIN")
        conn.execute("insert into victim_t values (1)")
    row = conn.execute("select pg_backend_pid()").fetchone()
    assert row is not None
    terminate(pg, row[0])
    time.sleep(0.5)
    with pytest.raises(psycopg.errors.AdminShutdown):
        conn.execute("select 1")
    with pytest.raises(psycopg.OperationalError, match="the connection is closed"):
        conn.execute("select 1")
    conn.close()
    assert query_ok(proc.dsn("postgres"))


def test_session_backend_slow_to_exit_client_is_closed_at_once(pg: PgCluster,
                                                               pooler: PoolerFactory) -> None:
    """A terminated backend sends its FATAL, then drops its temporary tables before its socket
    closes. The client is not left connected meanwhile: the session is over. Only the
    server's own error goes to it."""
    proc = start(pooler, "session", pool_size=2)
    sock, _ = wire.login(proc.host, proc.port)
    with sock:
        wire.send_query(sock, "do $$ begin for i in 1..2000 loop "
                              "execute format('create temp table t%s(a int, b text)', i); "
                              "end loop; end $$")
        assert wire.query_result(sock) == ([], None)
        wire.send_query(sock, "select pg_backend_pid()")
        rows, _ = wire.query_result(sock)
        terminate(pg, rows[0][0].decode())  # type: ignore[union-attr]
        got = read_to_end(sock, 10)
    assert [wire.error_fields(body)["C"] for _, kind, body in got if kind == b"E"] == ["57P01"]
    # The backend took longer than this to exit (direct, the client waits for that too).
    assert got[-1][0] < 1.0


@pytest.fixture
def proxy(pg: PgCluster) -> Iterator[PgProxy]:
    found = PgProxy("127.0.0.1", pg.port)
    try:
        yield found
    finally:
        found.close()


def through(pooler: PoolerFactory, proxy: PgProxy, mode: str) -> PoolerProc:
    return start(pooler, mode, pool_size=1,
                 databases={"app": f"host=127.0.0.1 port={proxy.port} dbname=app"})


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_server_fatal_with_late_eof_ends_the_client_at_once(pg: PgCluster,
                                                            pooler: PoolerFactory,
                                                            proxy: PgProxy, mode: str) -> None:
    """The server's end of stream comes seconds after its FATAL: the linked client gets the
    FATAL and is disconnected without waiting for it."""
    proxy.eof_delay = 3.0
    proc = through(pooler, proxy, mode)
    sock, _ = wire.login(proc.host, proc.port)
    with sock:
        wire.send_query(sock, "begin")
        assert wire.query_result(sock) == ([], None)
        wire.send_query(sock, "select pg_backend_pid()")
        rows, _ = wire.query_result(sock)
        terminate(pg, rows[0][0].decode())  # type: ignore[union-attr]
        got = read_to_end(sock, 10)
    assert [wire.error_fields(body)["C"] for _, kind, body in got if kind == b"E"] == ["57P01"]
    assert got[-1][0] < 1.5
    # The pool goes on with a new server (the dying one is not reused).
    assert query_ok(proc.dsn("postgres"))


def test_idle_server_fatal_is_not_given_to_the_next_client(pg: PgCluster,
                                                           pooler: PoolerFactory,
                                                           proxy: PgProxy) -> None:
    """An idle server whose backend was terminated, while its end of stream is late: the next
    client gets a new server, not the dying one."""
    proxy.eof_delay = 3.0
    proc = through(pooler, proxy, "transaction")
    with psycopg.connect(proc.dsn("postgres"), autocommit=True) as conn:
        row = conn.execute("select pg_backend_pid()").fetchone()
        assert row is not None
        terminate(pg, row[0])
        time.sleep(0.3)
        started = time.monotonic()
        other = conn.execute("select pg_backend_pid()").fetchone()
        assert other is not None and other[0] != row[0]
        assert time.monotonic() - started < 2


def test_server_connection_cut_ends_the_client(pg: PgCluster, pooler: PoolerFactory,
                                               proxy: PgProxy) -> None:
    """The server's connection drops with no FATAL (a network failure): the client is told
    at once and disconnected."""
    proc = through(pooler, proxy, "session")
    sock, _ = wire.login(proc.host, proc.port)
    with sock:
        wire.send_query(sock, "select 1")
        assert wire.query_result(sock) == ([[b"1"]], None)
        proxy.cut()
        got = read_to_end(sock, 5)
    errors = [wire.error_fields(body) for _, kind, body in got if kind == b"E"]
    assert [(e["C"], e["M"]) for e in errors] == [("08006", "server conn crashed?")]
    assert got[-1][0] < 1.0


def test_server_reset_mid_result(pg: PgCluster, pooler: PoolerFactory) -> None:
    """The link to the server is reset inside a DataRow: that client gets an error, everyone
    else is served as before."""
    with FaultProxy(pg.port) as proxy:
        proc = start(pooler, pool_size=2,
                     databases={"app": f"host=127.0.0.1 port={proxy.port} dbname=app"})
        other = psycopg.connect(proc.dsn("postgres"), autocommit=True)
        assert other.execute("select 1").fetchone() == (1,)
        victim = psycopg.connect(proc.dsn("postgres"), autocommit=True)
        proxy.downstream.reset_after(300_000)
        with pytest.raises(psycopg.OperationalError) as err:
            victim.execute("select repeat('x', 100) from generate_series(1, 100000)")
        assert "lost synchronization" not in str(err.value)
        assert proxy.downstream.reset_done.is_set()
        victim.close()
        assert other.execute("select 2").fetchone() == (2,)
        assert query_ok(proc.dsn("postgres"))
        assert proc.is_running()
        assert "server conn crashed?" in proc.log_text()
        other.close()
