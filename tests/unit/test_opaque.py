"""Which texts may change the session unseen, and reading the session back (sans-IO)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgusher.protocol.capture import RAW, capture_query, merge_named, parse_rows, session_sets
from pgusher.protocol.opaque import custom_names, opaque_reason
from pgusher.protocol.session import replay_sql

KNOWN = [
    b"select abalance from pgbench_accounts where aid = 1",
    b"UPDATE pgbench_accounts SET abalance = abalance + -3 WHERE aid = 7",
    b"INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 2, 3, 4, "
    b"CURRENT_TIMESTAMP)",
    b"select count(*) filter (where x > 1) over (partition by y) from t",
    b"insert into t (a) values (1) on conflict (a) do nothing",
    b"copy (select i, repeat('x', 10) from generate_series(1, 5) i) to stdout",
    b"explain (analyze, buffers) select 1",
    b"vacuum (verbose) t",
    b"select * from a join (select 1) b on true cross join lateral (select 2) c",
    b"select a from t group by (a)",
    b"select * from t as x(a, b)",
    b"select i from generate_series(1, 3) g(i)",
    b"select o.n from pg_catalog.pg_class c cross join lateral "
    b"(select pg_catalog.array_position(pg_catalog.current_schemas(true), 'x')) as o(n)",
    b"insert into t (a) values (1) on conflict (a) do update set a = excluded.a",
    b"select now(), lower('x'), pg_catalog.upper('y'), x::numeric(10,2), "
    b"y::character varying(3), z::timestamp(3) with time zone",
    b"select pg_advisory_xact_lock(1)",
    b"with t(a) as (select 1) select * from t",
    b"select 1 where exists (select 1) and x in (1, 2) and y = any (array[1])",
    b"select 'set_config(' || 'do it' as text, $$ call me $$",
    b"select coalesce(a, b), greatest(1, 2), substring('abc' from 2), extract(year from now())",
    b"copy t (a, b) from stdin",
    b"create temp table t(x int)",
    b"select E'a\\'b', 'c'",
]

OPAQUE = [
    b"select set_config('role', $1, false)",
    b"select pg_catalog.set_config('a.b', 'c', false)",
    b"DO $$BEGIN EXECUTE 'SET ROLE r'; END$$",
    b"do 'begin null; end'",
    b"select public.probe_setrole()",
    b"select probe_setrole()",
    b"select (1) + probe_setrole()",
    b"select * from generate_series(1, 2) as g(i), probe_setrole()",
    b"select * from t as set_config(a, b)",  # an alias named so: still taken for a call
    b"call p()",
    b"execute q1",
    b"explain analyze execute q1",
    b"/* /* */ */ execute q1",
    b"select '/*', set_config/**/('role','x',false), '*/'",
    b"select E'\\'', set_config('role','x',false), ''",
    b"select '\\', set_config('role','x',false), ''",  # standard_conforming_strings off
    b"select \"Lower\"('x')",
    b"select \"set_config\"('role', 'x', false)",
    "select ñ(1)".encode(),
    b"select pg_advisory_lock(1)",
    b"select setseed(0.5)",
    b"select query_to_xml('select set_config(''role'', ''x'', false)', true, true, '')",
    b"select 1; select my_function()",
    b"select * from t join lateral f(t.x) on true",
    b"select index(1)",
    b"SELECT SET_CONFIG('role', 'x', false)",
]


@pytest.mark.parametrize("text", KNOWN)
def test_known(text: bytes) -> None:
    assert opaque_reason(text) == ""
    assert opaque_reason(text + b"\0") == ""


@pytest.mark.parametrize("text", OPAQUE)
def test_opaque(text: bytes) -> None:
    assert opaque_reason(text) != ""
    assert opaque_reason(text + b"\0") != ""


_SAFE_PARTS = st.sampled_from([
    "select 1", "select a from t where b = 2", "select count(*) from t",
    "update t set a = a + 1 where id = 3", "insert into t (a, b) values (1, now())",
    "select 'x; y' as s", "select $q$ call f() $q$", "select lower('A')", "select 1 -- note",
    "select /* a comment */ 2", "delete from t where id in (1, 2)",
])
_UNSAFE_CALLS = st.sampled_from([
    "set_config('role', 'r', false)", "my_func(1)", "s.f()", "pg_advisory_lock(2)",
    '"F"(3)', "setseed(0)",
])
_SPACE = st.sampled_from([" ", "  ", "\n", "\t", " /* c */ ", " /* a /* nested */ b */ "])


@settings(max_examples=300, deadline=None)
@given(st.lists(_SAFE_PARTS, max_size=4), _UNSAFE_CALLS, _SPACE,
       st.lists(_SAFE_PARTS, max_size=4))
def test_an_unsafe_call_is_found_wherever_it_sits(before: list[str], call: str, space: str,
                                                  after: list[str]) -> None:
    name, _, args = call.partition("(")
    statement = f"select 1,{space}{name}{space}({args}"
    text = ";\n".join([*before, statement, *after])
    assert opaque_reason(text.encode()) != "", text


@settings(max_examples=300, deadline=None)
@given(st.lists(_SAFE_PARTS, min_size=1, max_size=6))
def test_plain_statements_are_known(parts: list[str]) -> None:
    text = ";\n".join(parts)
    assert opaque_reason(text.encode()) == "", text


def test_custom_names_come_from_quoted_dotted_names() -> None:
    assert custom_names(b"select set_config('myapp.tenant', $1, false)") == ["myapp.tenant"]
    assert custom_names(b"DO $$BEGIN PERFORM set_config('App.X', '1', false); END$$") == [
        "app.x"]
    assert custom_names(b"select 'a.b.c', 'plain'") == ["a.b.c"]


def _row(*cols: str | None) -> bytes:
    out = [struct.pack("!h", len(cols))]
    for col in cols:
        if col is None:
            out.append(struct.pack("!i", -1))
        else:
            raw = col.encode()
            out.append(struct.pack("!i", len(raw)) + raw)
    return b"".join(out)


def test_capture_rows_become_carried_settings() -> None:
    got = parse_rows([
        _row("s", "search_path", '"$user", public'),
        _row("s", "work_mem", "7168"),
        _row("s", "application_name", "app"),
        _row("r", "role", "low"),
        _row("r", "session_authorization", "alice"),
        _row("c", "myapp.tenant", "t1"),
        _row("c", "myapp.unset", None),
        _row("h", "LISTEN", None),
    ])
    assert got.hidden == ["LISTEN"]
    sets = session_sets(got, "alice", {"application_name": "application_name"})
    assert sets == {"search_path": RAW + '"$user", public', "work_mem": RAW + "7168",
                    "role": RAW + "low", "myapp.tenant": RAW + "t1"}
    other_login = session_sets(got, "bob", {})
    assert other_login["session_authorization"] == RAW + "alice"
    assert "role" not in session_sets(parse_rows([_row("r", "role", "none")]), "alice", {})


def test_capture_rejects_malformed_rows() -> None:
    with pytest.raises(ValueError):
        parse_rows([b"\x00\x03\x00\x00"])
    with pytest.raises(ValueError):
        parse_rows([_row("s", "x")])


def test_capture_query_asks_for_custom_names() -> None:
    msg = capture_query({"myapp.tenant", "o'dd.name"})
    assert msg[:1] == b"Q"
    assert b"current_setting(E'myapp.tenant', true)" in msg
    assert b"E'o''dd.name'" in msg


def test_raw_values_replay_with_set_config() -> None:
    assert replay_sql("search_path", RAW + '"$user", pu\\b\'lic') == (
        "SELECT pg_catalog.set_config(E'search_path', E'\"$user\", pu\\\\b''lic', false)")
    assert replay_sql("role", RAW + "low") == (
        "SELECT pg_catalog.set_config(E'role', E'low', false)")
    assert replay_sql("role", None) == "RESET ROLE"


def test_set_config_with_literal_names_needs_only_those_read_back() -> None:
    assert opaque_reason(b"select set_config('myapp.tenant', $1, false)") == (
        "set_config myapp.tenant")
    assert opaque_reason(b"SELECT pg_catalog.set_config('Search_Path', 'a', false), "
                         b"set_config('role', 'r', false)") == "set_config role,search_path"
    # A computed name, another schema's set_config, or other code: everything is read back.
    assert opaque_reason(b"select set_config(n, 'x', false) from t") == "function set_config"
    assert opaque_reason(b"select x.set_config('a', 'b', false)") == "function set_config"
    assert opaque_reason(b"select set_config('a.b', f(1), false)") == "function f"


def test_named_read_back_updates_only_what_it_asked() -> None:
    old = {"search_path": "hs_a", "myapp.tenant": RAW + "t0", "role": RAW + "r0"}
    got = parse_rows([_row("r", "role", "none"), _row("r", "session_authorization", "alice"),
                      _row("c", "myapp.tenant", "t1"), _row("c", "myapp.gone", None)])
    merged = merge_named(old, got, ["myapp.tenant", "myapp.gone"], "alice", {})
    assert merged == {"search_path": "hs_a", "myapp.tenant": RAW + "t1"}
    assert capture_query(["myapp.tenant"], full=False).find(b"pg_settings") < 0
    assert capture_query(["myapp.tenant"]).find(b"pg_settings") > 0
