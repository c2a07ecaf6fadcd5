"""The session inspector: what a client's SQL does to its session."""

from __future__ import annotations

import random

import pytest

from pgusher.protocol import session
from pgusher.protocol.session import (
    DIRTY,
    DISCARD_ALL,
    LISTEN,
    OPAQUE,
    RESET,
    RESET_ALL,
    ROLLBACK,
    SET,
    inspect,
    might_affect_session,
    parse_options,
    replay_sql,
    split_statements,
    sql_prepared,
)


@pytest.mark.parametrize("sql,effects", [
    (b"select 1", []),
    (b"UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 1", []),
    (b"SET search_path = a, b", [(SET, "search_path", "a, b")]),
    (b"set search_path to public", [(SET, "search_path", "public")]),
    (b"SET SESSION statement_timeout = '5s'", [(SET, "statement_timeout", "'5s'")]),
    (b"set local work_mem = '1MB'", []),
    (b"SET ROLE alice", [(SET, "role", "alice")]),
    (b"RESET ROLE", [(RESET, "role", "")]),
    (b"set session authorization bob", [(SET, "session_authorization", "bob")]),
    (b"SET myapp.tenant = 'x'", [(SET, "myapp.tenant", "'x'")]),
    (b"RESET ALL", [(RESET_ALL, "", "")]),
    (b"DISCARD ALL", [(DISCARD_ALL, "", "")]),
    (b"RESET search_path", [(RESET, "search_path", "")]),
    (b"select set_config('search_path', 'x', false)", [(OPAQUE, "set_config search_path",
                                                         "search_path")]),
    (b"select set_config('myapp.t', $1, false)", [(OPAQUE, "set_config myapp.t", "myapp.t")]),
    (b"select set_config(name, 'x', false) from t", [(OPAQUE, "function set_config", "")]),
    (b"select my_function(1)", [(OPAQUE, "function my_function", "")]),
    (b"select lower('A'), now(), count(*) from t where x in (1, 2)", []),
    (b"CALL p(1)", [(OPAQUE, "CALL", "")]),
    (b"EXECUTE q1", [(OPAQUE, "EXECUTE", "")]),
    (b"SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", [(OPAQUE, "SET", "")]),
    (b"SET SCHEMA 'x'", [(OPAQUE, "SET", "")]),
    (b"create temp table t(x int)", [(DIRTY, "temporary object", "")]),
    (b"CREATE TEMPORARY VIEW v AS SELECT 1", [(DIRTY, "temporary object", "")]),
    (b"select pg_advisory_lock(1)", [(DIRTY, "session advisory lock", ""),
                                     (OPAQUE, "function pg_advisory_lock", "")]),
    (b"select pg_advisory_xact_lock(1)", []),
    (b"LISTEN ch", [(LISTEN, "ch", "")]),
    (b"declare c cursor with hold for select 1", [(DIRTY, "WITH HOLD cursor", "")]),
    (b"declare c cursor for select 1", []),
    (b"ROLLBACK", [(ROLLBACK, "", "")]),
    (b"set transaction isolation level serializable", []),
    (b"SET x FROM CURRENT", [(OPAQUE, "SET ... FROM CURRENT", "")]),
    (b"select 'set search_path = x'", []),
    (b"select 1; set search_path = y", [(SET, "search_path", "y")]),
    (b"/* leading */ SET search_path = z", [(SET, "search_path", "z")]),
    (b"do $$ begin set search_path = q; end $$", [(OPAQUE, "DO", "")]),
])
def test_inspect(sql: bytes, effects: list[tuple[str, str, str]]) -> None:
    assert inspect(sql) == effects
    assert inspect(sql + b"\0") == effects  # as it sits in a Query message


def test_prefilter_never_hides_an_effect() -> None:
    """Whatever inspect() finds, the cheap pre-filter must let through."""
    samples = [b"set x = 1", b"select set_config('a', 'b', false)", b"RESET ALL",
               b"select 1; DISCARD ALL", b"create temp table t()", b"LISTEN c",
               b"select pg_advisory_lock(2)", b"rollback", b"prepare p as select 1"]
    for sql in samples:
        assert inspect(sql), sql
        assert might_affect_session(sql), sql
    for sql in [b"select 1", b"UPDATE t SET a = 1 WHERE b = 2", b"insert into t values (1)"]:
        assert not might_affect_session(sql), sql


@pytest.mark.parametrize("sql", [
    b"select 1", b"select 1;", b"select 1; \0", b"select 1;;\n", b"  \t\vset x = 1",
    b"\x0cSET x = 1", b"select 1; set x = 1", b"select 1;set x = 1;", b"select ';set x = 1'",
    b"/* c */ set x = 1", b"-- c\nset x = 1", b"--\n", b"/**/", b"select temperature from t",
    b"select set_config('a', 'b', false)", b"select pg_advisory_lock(1)", b"settle",
    b"Create TEMP table t()", b"create table offset_t (x int)", b"create table secret (x int)",
    b"declare c cursor for select 1", b"execute p", b"LOAD 'x'", b"abort", b"rollback;",
    b"UPDATE t SET a = 1", b"select 1 -- set x\n", b"select 1; -- c\n", b"with x as (select 1)"
    b" select * from x;\0", b"DEALLOCATE ALL", b"listen c", b"prepare p as select 1", b"",
])
def test_quick_answer_agrees_with_both_stages(sql: bytes) -> None:
    low = sql.lower()
    both = (session._PREFILTER.search(low) is not None
            and session._PRECISE.search(low) is not None)
    assert might_affect_session(sql) == both
    assert might_affect_session(sql + b"\0") == (
        session._PREFILTER.search(low + b"\0") is not None
        and session._PRECISE.search(low + b"\0") is not None)


def test_quick_answer_agrees_on_random_texts() -> None:
    words = [b"set", b"SET", b"reset", b"select", b"temp", b"set_config(", b"pg_advisory_lock(",
             b"create", b"declare", b"x", b"1", b";", b" ", b"\t", b"\n", b"\v", b"\f", b"\0",
             b"/*", b"*/", b"--", b"'", b"$$", b"listen", b"abort", b"offset", b"rollback"]
    rng = random.Random(15)
    for _ in range(3000):
        sql = b"".join(rng.choice(words) for _ in range(rng.randint(0, 8)))
        low = sql.lower()
        both = (session._PREFILTER.search(low) is not None
                and session._PRECISE.search(low) is not None)
        assert might_affect_session(sql) == both, sql


def test_split_statements_ignores_quoted_semicolons() -> None:
    sql = "select ';' ; select $a$ ; $a$ ; -- c ;\nselect \"x;y\""
    assert split_statements(sql) == ["select ';'", "select  $$", 'select "x;y"']


@pytest.mark.parametrize("value,pairs", [
    ("-c search_path=sa -c statement_timeout=5s",
     [("search_path", "sa"), ("statement_timeout", "5s")]),
    ("--work-mem=64MB", [("work_mem", "64MB")]),
    ("-csearch_path=a\\ b", [("search_path", "a b")]),
    ("", []),
])
def test_parse_options(value: str, pairs: list[tuple[str, str]]) -> None:
    assert parse_options(value) == pairs


def test_replay_sql() -> None:
    assert replay_sql("role", "alice") == "SET ROLE alice"
    assert replay_sql("role", None) == "RESET ROLE"
    assert replay_sql("session_authorization", None) == "RESET SESSION AUTHORIZATION"
    assert replay_sql("search_path", "a, b") == "SET search_path = a, b"
    assert replay_sql("Weird Name", "1") == 'SET "Weird Name" = 1'


@pytest.mark.parametrize(("text", "verb"), [
    (b"PREPARE p(int) AS select $1", ("prepare", "p", "(int) AS select $1", "")),
    (b"execute P(1, 'a')", ("execute", "p", "(1, 'a')", "")),
    (b'DEALLOCATE PREPARE "Q"', ("deallocate", '"Q"', "", "")),
    (b"deallocate all", None),
    (b"EXPLAIN EXECUTE s1", ("execute", "s1", "", "EXPLAIN ")),
    (b"explain (analyze, costs off) execute s1(2)",
     ("execute", "s1", "(2)", "explain (analyze, costs off) ")),
    (b"explain analyze verbose execute s1", ("execute", "s1", "", "explain analyze verbose ")),
    (b"create temp table t as execute s1(1) with no data",
     ("execute", "s1", "(1) with no data", "create temp table t as ")),
    (b'CREATE TABLE IF NOT EXISTS "S".t (a, b) AS EXECUTE s1',
     ("execute", "s1", "", 'CREATE TABLE IF NOT EXISTS "S".t (a, b) AS ')),
    (b"explain execute s1 with data", None),  # not SQL: left to the server
    (b"explain select 1", None),
    (b"execute s1; select 1", None),  # one statement only
])
def test_sql_prepared(text: bytes, verb: tuple[str, str, str, str] | None) -> None:
    assert sql_prepared(text) == verb
