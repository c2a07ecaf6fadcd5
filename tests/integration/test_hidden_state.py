"""Session state changed where the pooler cannot read it: DO blocks, functions, CALL, bound
set_config, prepared statements. In transaction mode nothing of it may reach another client,
and the client that made it keeps it, as on a direct connection."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import asyncpg
import psycopg
import pytest
from poolcase import LOW_ROLE, create_session_changers, start

from support import PgCluster, PoolerFactory, PoolerProc

USER = "scram_user"  # not a superuser: no ParameterStatus reveals a change of role
LOW = LOW_ROLE


def one(conn: psycopg.Connection, sql: str, params: object = None, **kw: object) -> object:
    row = conn.execute(sql, params, **kw).fetchone()  # type: ignore[call-overload]
    assert row is not None
    return row[0]


@pytest.fixture
def setup(pg: PgCluster) -> None:
    create_session_changers(pg)


@pytest.fixture
def pair(setup: None, pooler: PoolerFactory) -> Iterator[tuple[PoolerProc, psycopg.Connection,
                                                                psycopg.Connection]]:
    """Two clients of a pool of one server: every transaction of both runs on it."""
    proc = start(pooler, pool_size=1)
    a = psycopg.connect(proc.dsn(USER, "scram_pass"), autocommit=True, prepare_threshold=None)
    b = psycopg.connect(proc.dsn(USER, "scram_pass"), autocommit=True, prepare_threshold=None)
    yield proc, a, b
    a.close()
    b.close()


def _fresh(b: psycopg.Connection) -> None:
    """What a client that changed nothing must see."""
    assert one(b, "select current_user::text") == USER
    assert one(b, "select session_user::text") == USER
    assert one(b, "show search_path") == '"$user", public'
    assert one(b, "show work_mem") == "4MB"
    assert one(b, "show statement_timeout") == "0"
    assert one(b, "select current_setting('myapp.tenant', true)") in (None, "")


@pytest.mark.parametrize("how", [
    "DO $$BEGIN EXECUTE 'SET ROLE hidden_low'; END$$",
    "select public.hs_setrole()",
    "bound",
])
def test_role_changed_unseen_stays_with_its_client(pair, how: str) -> None:  # type: ignore[no-untyped-def]
    _proc, a, b = pair
    if how == "bound":
        a.execute("select set_config('role', %s, false)", [LOW])
    else:
        a.execute(how)
    for _ in range(3):
        _fresh(b)
        assert one(a, "select current_user::text") == LOW
        assert one(a, "select session_user::text") == USER
    a.execute("reset role")
    assert one(a, "select current_user::text") == USER


def test_settings_changed_in_do_function_and_call(pair) -> None:  # type: ignore[no-untyped-def]
    _proc, a, b = pair
    a.execute("DO $$BEGIN SET search_path = hs_a; SET work_mem = '5MB'; END$$")
    _fresh(b)
    assert one(a, "show search_path") == "hs_a"
    assert one(a, "show work_mem") == "5MB"
    a.execute("select public.hs_settings()")
    _fresh(b)
    assert one(a, "show search_path") == "hs_a, public"
    assert one(a, "show work_mem") == "7MB"
    assert one(a, "show statement_timeout") == "41s"
    a.execute("call public.hs_proc()")
    _fresh(b)
    assert one(a, "show search_path") == "hs_a"
    a.execute("reset all")
    assert one(a, "show search_path") == '"$user", public'
    _fresh(a)


def test_bound_and_prepared_set_config(pair) -> None:  # type: ignore[no-untyped-def]
    """psycopg's prepared statements (its sixth execution by default) and bound parameters."""
    _proc, a, b = pair
    for i in range(8):
        a.execute("select set_config('myapp.tenant', %s, false)", [f"t{i}"], prepare=i > 2)
        assert one(b, "select current_setting('myapp.tenant', true)") in (None, "")
        assert one(a, "select current_setting('myapp.tenant', true)") == f"t{i}"
    a.execute("select set_config('search_path', %s, false)", ["hs_a, public"], prepare=True)
    _fresh(b)
    assert one(a, "show search_path") == "hs_a, public"


def test_protocol_prepared_set_role(pair) -> None:  # type: ignore[no-untyped-def]
    """SET ROLE as a named protocol statement, run again and again (psycopg's default
    prepare_threshold prepares it at its sixth run), with RESET ROLE the same way."""
    _proc, a, b = pair
    for i in range(8):
        a.execute(f"set role {LOW}", prepare=i >= 2)
        _fresh(b)
        assert one(a, "select current_user::text") == LOW
        a.execute("reset role", prepare=i >= 2)
        assert one(a, "select current_user::text") == USER


SET_SPELLINGS = [  # (SQL, the setting it changes, what the setter then sees)
    ("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
     "default_transaction_isolation", "serializable"),
    ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
     "default_transaction_read_only", "on"),
    ("SET SESSION CHARACTERISTICS AS TRANSACTION DEFERRABLE",
     "default_transaction_deferrable", "on"),
    ("SET SCHEMA 'pg_catalog'", "search_path", "pg_catalog"),
    ("SET search_path TO pg_catalog", "search_path", "pg_catalog"),
    ("SET TIME ZONE 'Asia/Tokyo'", "TimeZone", "Asia/Tokyo"),
    ("SET TIME ZONE INTERVAL '+03:00' HOUR TO MINUTE", "TimeZone", "<+03>-03"),
    ("SET NAMES 'LATIN1'", "client_encoding", "LATIN1"),
    ("SET XML OPTION CONTENT", "xmloption", "content"),
    ("SET SESSION statement_timeout = 123456", "statement_timeout", "123456ms"),
    ("SET myapp.x = 'v1'", "myapp.x", "v1"),
]


@pytest.mark.parametrize(("sql", "name", "value"), SET_SPELLINGS)
def test_every_set_spelling_stays_with_its_client(  # type: ignore[no-untyped-def]
        pair, sql: str, name: str, value: str) -> None:
    _proc, a, b = pair
    before = one(b, "select current_setting(%s, true)", [name])
    a.execute(sql)
    for _ in range(3):
        assert one(a, "select current_setting(%s, true)", [name]) == value
        seen = one(b, "select current_setting(%s, true)", [name])
        # A custom setting another client defined on the server exists there, reset to the
        # empty string, where a fresh backend would not know the name (docs/SESSION_STATE.md).
        assert seen == before or ("." in name and before is None and seen == "")


def test_sql_prepare_of_set_config(pair) -> None:  # type: ignore[no-untyped-def]
    _proc, a, b = pair
    a.execute(f"PREPARE trk AS SELECT set_config('role', '{LOW}', false)")
    a.execute("EXECUTE trk")
    _fresh(b)
    assert one(a, "select current_user::text") == LOW


def test_asyncpg_statement_cache(setup: None, pooler: PoolerFactory) -> None:
    proc = start(pooler, pool_size=1)

    async def main() -> None:
        a = await asyncpg.connect(dsn=_uri(proc), statement_cache_size=100)
        b = await asyncpg.connect(dsn=_uri(proc), statement_cache_size=100)
        try:
            for i in range(5):  # served from asyncpg's statement cache after the first
                await a.fetchval("select set_config('myapp.tenant', $1, false)", f"x{i}")
                assert await b.fetchval("select current_setting('myapp.tenant', true)") in (
                    None, "")
                await a.fetchval("select set_config('role', $1, false)", LOW)
                assert await b.fetchval("select current_user::text") == USER
                assert await a.fetchval("select current_user::text") == LOW
                assert await a.fetchval("select current_setting('myapp.tenant')") == f"x{i}"
                await a.execute("reset role")
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())


def _uri(proc: PoolerProc) -> str:
    return f"postgresql://{USER}:scram_pass@127.0.0.1:{proc.port}/app"


def test_reset_semantics_match_postgres(pair) -> None:  # type: ignore[no-untyped-def]
    """RESET ALL keeps the role and session authorization; a change of session authorization
    resets the role; bound set_config, SET SCHEMA and session characteristics are kept."""
    _proc, a, b = pair
    a.execute(f"set role {LOW}")
    a.execute("reset all")
    assert one(a, "select current_user::text") == LOW
    _fresh(b)
    a.execute("reset role")
    a.execute("set schema 'hs_a'")
    assert one(a, "show search_path") == "hs_a"
    _fresh(b)
    a.execute("set session characteristics as transaction read only")
    assert one(a, "show default_transaction_read_only") == "on"
    assert one(b, "show default_transaction_read_only") == "off"
    a.execute("select set_config('work_mem', %s, false)", ["6MB"])
    assert one(a, "show work_mem") == "6MB"
    _fresh(b)


def test_session_authorization_resets_role(pg: PgCluster, setup: None,
                                           pooler: PoolerFactory) -> None:
    proc = start(pooler, pool_size=1)
    with psycopg.connect(proc.dsn("postgres"), autocommit=True) as a, \
            psycopg.connect(proc.dsn("postgres"), autocommit=True) as b:
        a.execute(f"set session authorization {USER}")
        a.execute(f"set role {LOW}")
        a.execute("reset session authorization")
        assert one(a, "select current_user::text") == "postgres"
        assert one(a, "select session_user::text") == "postgres"
        a.execute(f"set session authorization {USER}")
        a.execute("reset all")
        assert one(a, "select session_user::text") == USER
        assert one(b, "select session_user::text") == "postgres"
        assert one(b, "select current_user::text") == "postgres"
        a.execute("set session authorization default")
        assert one(a, "select session_user::text") == "postgres"


def test_hidden_temp_table_and_lock_pin_then_reset_the_server(pair) -> None:  # type: ignore[no-untyped-def]
    """Made where SQL does not show it, the state still keeps its client on the server (the
    read-back sees it); once DISCARD ALL drops it, the next client gets a clean server."""
    _proc, a, b = pair
    a.execute("DO $$BEGIN CREATE TEMP TABLE hs_t(x int); PERFORM pg_advisory_lock(77); END$$")
    assert one(a, "select to_regclass('pg_temp.hs_t') is not null") is True
    assert one(a, "select pg_advisory_unlock(77)") is True
    a.execute("discard all")
    assert one(b, "select count(*) from pg_locks where locktype = 'advisory' "
                  "and pid = pg_backend_pid()") == 0
    assert one(b, "select to_regclass('pg_temp.hs_t') is null") is True

