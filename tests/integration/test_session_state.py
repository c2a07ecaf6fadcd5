"""Session state in transaction mode: every client keeps its own, nothing leaks."""

from __future__ import annotations

import psycopg
import pytest
from poolcase import start

from support import PgCluster, PoolerFactory


def one(conn: psycopg.Connection, sql: str) -> object:
    row = conn.execute(sql).fetchone()
    assert row is not None
    return row[0]


@pytest.fixture
def two_clients(pg: PgCluster, pooler: PoolerFactory):  # type: ignore[no-untyped-def]
    pg.sql("create schema if not exists sa; create schema if not exists sb; "
           "grant usage on schema sa, sb to scram_user")
    proc = start(pooler, pool_size=1)
    a = psycopg.connect(proc.dsn("postgres", application_name="client_a"), autocommit=True)
    b = psycopg.connect(proc.dsn("postgres", application_name="client_b"), autocommit=True)
    yield proc, a, b
    a.close()
    b.close()


def test_isolation_on_one_server(two_clients) -> None:  # type: ignore[no-untyped-def]
    """A sets search_path, TimeZone, a custom setting and a role; B never sees them."""
    _proc, a, b = two_clients
    assert one(a, "select pg_backend_pid()") == one(b, "select pg_backend_pid()")
    a.execute("set search_path = sa, public")
    a.execute("set timezone = 'Asia/Tokyo'")
    a.execute("set myapp.tenant = 'acme'")
    a.execute("set statement_timeout = '42s'")
    a.execute("set role scram_user")
    b.execute("set search_path = sb")
    for _ in range(3):
        assert one(a, "show search_path") == "sa, public"
        assert one(b, "show search_path") == "sb"
        assert one(a, "show timezone") == "Asia/Tokyo"
        assert one(b, "show timezone") != "Asia/Tokyo"
        assert one(a, "select current_setting('myapp.tenant', true)") == "acme"
        assert one(b, "select current_setting('myapp.tenant', true)") in (None, "")
        assert one(a, "show statement_timeout") == "42s"
        assert one(b, "show statement_timeout") == "0"
        assert one(a, "select current_user") == "scram_user"
        assert one(b, "select current_user") == "postgres"
        assert one(a, "show application_name") == "client_a"
        assert one(b, "show application_name") == "client_b"
    a.execute("reset role")
    assert one(a, "select current_user") == "postgres"
    a.execute("reset search_path")
    assert one(a, "show search_path") == '"$user", public'


def test_role_never_leaks(two_clients) -> None:  # type: ignore[no-untyped-def]
    """SET ROLE, SET SESSION AUTHORIZATION and set_config('role') stay with their client."""
    _proc, a, b = two_clients
    a.execute("set session authorization scram_user")
    assert one(b, "select current_user") == "postgres"
    assert one(b, "select session_user") == "postgres"
    assert one(a, "select session_user") == "scram_user"
    a.execute("reset session authorization")
    a.execute("select set_config('role', 'scram_user', false)")
    assert one(b, "select current_user") == "postgres"
    assert one(a, "select current_user") == "scram_user"
    # A superuser-only action from B still works: B really is the superuser it logged in as.
    assert one(b, "select rolsuper from pg_roles where rolname = current_user") is True


def test_rolled_back_set_is_not_carried(two_clients) -> None:  # type: ignore[no-untyped-def]
    _proc, a, b = two_clients
    with a.transaction():
        a.execute("set search_path = sa")
        assert one(a, "show search_path") == "sa"
        a.execute("select 1")
    with pytest.raises(psycopg.errors.DivisionByZero), a.transaction():
        a.execute("set search_path = sb")
        a.execute("select 1/0")
    assert one(b, "show search_path") == '"$user", public'
    assert one(a, "show search_path") == "sa"  # the committed one, not the rolled-back one


def test_state_that_cannot_move_resets_the_server(pg: PgCluster,
                                                  pooler: PoolerFactory) -> None:
    """Temporary tables, session advisory locks and LISTEN are not handed on as if clean
    (with pinning off; test_pinned_state.py has the clients that keep their server)."""
    proc = start(pooler, pool_size=1, pgusher={"pin_state": "0"})
    a = psycopg.connect(proc.dsn("postgres"), autocommit=True)
    b = psycopg.connect(proc.dsn("postgres"), autocommit=True)
    try:
        a.execute("create temp table only_mine(x int)")
        assert one(b, "select to_regclass('pg_temp.only_mine')") is None
        a.execute("select pg_advisory_lock(4242)")
        assert one(b, "select pg_try_advisory_lock(4242)") is True
        b.execute("select pg_advisory_unlock_all()")
        a.execute("listen only_mine")
        assert one(b, "select count(*) from pg_listening_channels()") == 0
    finally:
        a.close()
        b.close()


def test_startup_options_follow_the_client(pg: PgCluster, pooler: PoolerFactory) -> None:
    proc = start(pooler, pool_size=1)
    a = psycopg.connect(proc.dsn("postgres", options="-c search_path=sa -c statement_timeout=5s"),
                        autocommit=True)
    b = psycopg.connect(proc.dsn("postgres"), autocommit=True)
    try:
        for _ in range(2):
            assert one(a, "show search_path") == "sa"
            assert one(a, "show statement_timeout") == "5s"
            assert one(b, "show search_path") == '"$user", public'
            assert one(b, "show statement_timeout") == "0"
        # RESET and DISCARD ALL return to the client's own startup values.
        a.execute("set statement_timeout = '9s'")
        a.execute("reset statement_timeout")
        assert one(a, "show statement_timeout") == "5s"
        a.execute("set search_path = sb")
        a.execute("discard all")
        assert one(a, "show search_path") == "sa"
    finally:
        a.close()
        b.close()


def test_every_reported_parameter_is_carried(two_clients) -> None:  # type: ignore[no-untyped-def]
    """Beyond PgBouncer's six: default_transaction_read_only is reported by PostgreSQL."""
    _proc, a, b = two_clients
    a.execute("set default_transaction_read_only = on")
    assert one(b, "show default_transaction_read_only") == "off"
    assert one(a, "show default_transaction_read_only") == "on"
