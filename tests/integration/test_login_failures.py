"""Server logins that fail: the reason reaches the clients, waiting ones are not left hanging
behind a server that is about to go, and the log has PgBouncer's lines."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from consolecase import console, start_console

from support import PgCluster, PoolerFactory

ROLE = "pw_changer"


@pytest.fixture
def role(pg: PgCluster) -> Iterator[str]:
    pg.sql(f"DROP ROLE IF EXISTS {ROLE}; CREATE ROLE {ROLE} LOGIN PASSWORD 'first'", "postgres")
    pg.grant_all([ROLE])
    try:
        yield ROLE
    finally:
        pg.sql(f"select pg_terminate_backend(pid) from pg_stat_activity "
               f"where usename = '{ROLE}'", "postgres")
        time.sleep(0.2)
        pg.sql(f"DROP OWNED BY {ROLE}", "app")
        pg.sql(f"DROP ROLE IF EXISTS {ROLE}", "postgres")


def run_query(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("select 1")


def test_cached_error_names_the_reason(pg: PgCluster, pooler: PoolerFactory,
                                       role: str) -> None:
    proc = start_console(pooler, server_login_retry="30",
                         userlist={"postgres": "postgres", role: "first"})
    with psycopg.connect(proc.dsn(role)) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    pg.sql(f"ALTER ROLE {role} NOLOGIN", "postgres")
    with console(proc) as admin:
        admin.execute("RECONNECT")
    with pytest.raises(psycopg.OperationalError, match="is not permitted to log in"):
        run_query(proc.dsn(role))
    # Within server_login_retry: at once, with the server's words.
    with pytest.raises(psycopg.OperationalError) as err:
        run_query(proc.dsn(role))
    assert "server login has been failing, cached error: " in str(err.value)
    assert "is not permitted to log in (server_login_retry)" in str(err.value)
    log = proc.log_text()
    assert "server login failed: FATAL role" in log
    assert f'closing because: role "{role}" is not permitted to log in' in log


def test_waiting_clients_fail_when_the_last_server_is_retired(pg: PgCluster,
                                                              pooler: PoolerFactory,
                                                              role: str) -> None:
    proc = start_console(pooler, pool_size=1, query_wait_timeout="20",
                         userlist={"postgres": "postgres", role: "first"})
    holder = psycopg.connect(proc.dsn(role))
    holder.execute("select 1")  # a transaction holds the pool's only server
    pg.sql(f"ALTER ROLE {role} PASSWORD 'second'", "postgres")
    results: list[tuple[float, str]] = []

    def wait_for_server() -> None:
        try:
            with psycopg.connect(proc.dsn(role), autocommit=True) as conn:
                conn.execute("select 1")
            results.append((time.monotonic(), "ok"))
        except psycopg.OperationalError as exc:
            results.append((time.monotonic(), str(exc)))

    waiters = [threading.Thread(target=wait_for_server) for _ in range(3)]
    for thread in waiters:
        thread.start()
    time.sleep(0.5)
    assert results == []  # queued behind the held server
    with console(proc) as admin:
        admin.execute("RECONNECT")  # the held server is retired once free
        started = time.monotonic()
        admin.execute("SET default_pool_size = 2")  # a new server is tried, and refused
    for thread in waiters:
        thread.join(15)
    assert len(results) == 3
    for at, message in results:
        assert "password authentication failed" in message
        assert at - started < 5
    holder.close()
    log = proc.log_text()
    assert log.count("closing because: password authentication failed for user") >= 4
