"""Statements shared by query text across schema changes, driven with no server."""

from __future__ import annotations

import struct

import pytest

from pgusher.protocol import messages as m
from pgusher.protocol.framing import ServerStream
from pgusher.protocol.link import LinkState
from pgusher.protocol.prepared import (
    KnownStatements,
    Statement,
    row_shape,
    schema_generation,
    statement_key,
)
from pgusher.protocol.translator import Translator


def parse(name: bytes, query: bytes, types: bytes = b"\0\0") -> tuple[int, bytes]:
    return ord("P"), m.message(b"P", name + b"\0" + query + b"\0" + types)


def bind(name: bytes) -> tuple[int, bytes]:
    return ord("B"), m.message(b"B", b"\0" + name + b"\0\0\0\0\0\0\0")


def describe(name: bytes) -> tuple[int, bytes]:
    return ord("D"), m.message(b"D", b"S" + name + b"\0")


SYNC = (ord("S"), m.SYNC)
EXECUTE = (ord("E"), m.message(b"E", b"\0\0\0\0\0"))
PARSE_OK = m.message(b"1")
BIND_OK = m.message(b"2")
NO_DATA = m.message(b"n")
READY = m.ready_for_query(b"I")


def params(*oids: int) -> bytes:
    return m.message(b"t", struct.pack(f"!h{len(oids)}i", len(oids), *oids))


def stream_for(link: LinkState) -> ServerStream:
    stream = ServerStream(lambda *a: None)
    stream.track(link)
    return stream


def first_server(known: KnownStatements, mine: dict[bytes, Statement],
                 row: bytes) -> LinkState:
    """s1 = "select * from t", parsed on a first server, which describes it as ``row``."""
    link = LinkState(10, known)
    out = Translator(link, mine).feed([parse(b"s1", b"select * from t"), SYNC])
    assert out.count(b"D\0\0\0") == 1  # the pooler describes what it parsed first
    stream_for(link).feed(PARSE_OK + params() + row + READY)
    assert not link.tags
    return link


INT_ROW = m.row_description([("a", 23)])
TWO_ROW = m.row_description([("a", 23), ("b", 25)])
REAL_ROW = m.row_description([("a", 700)])


def test_row_shape_ignores_table_and_format() -> None:
    body = INT_ROW[5:]
    other_table = body[:4] + b"\0\0\x30\x39" + body[8:]  # a re-created table: another OID
    text_format = body[:-2] + b"\0\1"
    assert row_shape(body) == row_shape(other_table) == row_shape(text_format)
    assert row_shape(body) != row_shape(REAL_ROW[5:]) != row_shape(TWO_ROW[5:])


def test_first_parse_learns_types_and_row() -> None:
    known = KnownStatements()
    mine: dict[bytes, Statement] = {}
    first_server(known, mine, INT_ROW)
    key = mine[b"s1"].key
    assert known.params[key] == b"\0\0" and known.shapes[key] == row_shape(INT_ROW[5:])


@pytest.mark.parametrize("row, changed", [(INT_ROW, False), (TWO_ROW, True), (REAL_ROW, True)],
                         ids=["same", "column added", "type changed"])
def test_parse_on_another_server_holds_the_client_until_checked(row: bytes,
                                                                changed: bool) -> None:
    known = KnownStatements()
    mine: dict[bytes, Statement] = {}
    first_server(known, mine, INT_ROW)
    key = mine[b"s1"].key
    other = LinkState(10, known)
    stream = stream_for(other)
    batch = [bind(b"s1"), EXECUTE, bind(b"s1"), EXECUTE, SYNC]
    now = Translator(other, mine).feed(batch)
    # The Parse, a Describe and a Flush go now; the client's Binds wait for the answer.
    assert now.endswith(m.message(b"H")) and b"B\0" not in now and other.held
    generation = schema_generation()
    shown = stream.feed(PARSE_OK + params() + row)
    assert shown == b"" and not other.held
    released, other.release = other.release, b""
    if not changed:
        assert released.count(b"B\0") == 2 and b"pgusher_error" not in released
        reply = (BIND_OK + m.command_complete("SELECT 1")) * 2 + READY
        assert stream.feed(reply) == reply
    else:
        # Parsed before the change: as on a direct connection, 0A000 at every use. The
        # statement just parsed is closed first, so the second Bind cannot run it either.
        assert released.startswith(m.message(b"C", b"S" + key.encode() + b"\0"))
        assert released.index(b"pgusher_error") > 0 and released.count(b"B\0") == 2
        assert key in known.stale and schema_generation() > generation
        assert key not in other.statements
        syntax = m.error_response("ERROR", "42601", "syntax error")
        close_ok = m.message(b"3")
        shown = stream.feed(close_ok + syntax + READY)
        assert shown == m.error_response("ERROR", "0A000", "cached plan must not change result "
                                         "type") + READY
        # A batch sent before the check came back cannot run the statement either.
        Translator(other, mine).feed([bind(b"s1"), EXECUTE, SYNC])
        shown = stream.feed(syntax + READY)
        assert b"0A000" in shown and b"42601" not in shown
    assert not other.tags and not other.held


def test_batch_sent_while_held_waits_its_turn() -> None:
    """A batch sent while the client waits for a check goes behind what waits already; its
    own use of the statement parses it again (the first Parse may yet be skipped)."""
    known = KnownStatements()
    mine: dict[bytes, Statement] = {}
    first_server(known, mine, INT_ROW)
    other = LinkState(10, known)
    stream = stream_for(other)
    first = Translator(other, mine).feed([bind(b"s1"), EXECUTE, SYNC])
    assert first.endswith(m.message(b"H")) and len(other.held) == 1
    assert Translator(other, mine).feed([bind(b"s1"), EXECUTE, SYNC]) == b""
    assert len(other.held) == 2  # behind the first check, and behind its own
    stream.feed(PARSE_OK + params() + INT_ROW)
    released, other.release = other.release, b""
    assert released.startswith(m.message(b"B", b"")[:1]) and released.endswith(b"H\0\0\0\4")
    reply = BIND_OK + m.command_complete("SELECT 1") + READY
    assert stream.feed(reply + m.message(b"3") + PARSE_OK + params() + INT_ROW) == reply
    released, other.release = other.release, b""
    assert released.startswith(b"B") and not other.held
    assert stream.feed(reply) == reply and not other.tags


def test_stale_statement_fails_without_a_server_round() -> None:
    known = KnownStatements()
    mine: dict[bytes, Statement] = {}
    first = first_server(known, mine, INT_ROW)
    stream = stream_for(first)
    Translator(first, mine).feed([bind(b"s1"), EXECUTE, SYNC])
    plan_changed = m.error_response("ERROR", "0A000", "cached plan must not change result type")
    assert stream.feed(plan_changed + READY) == plan_changed + READY
    assert mine[b"s1"].key in known.stale
    for link in (first, LinkState(10, known)):
        out = Translator(link, mine).feed([bind(b"s1"), EXECUTE, SYNC])
        assert b"pgusher_error" in out and not link.held


def test_parse_after_a_change_gets_a_statement_of_its_own() -> None:
    known = KnownStatements()
    mine: dict[bytes, Statement] = {}
    link = first_server(known, mine, INT_ROW)
    old_key = mine[b"s1"].key
    stream = stream_for(link)
    Translator(link, mine).feed([(ord("Q"), m.query("alter table t add b text"))])
    stream.feed(m.command_complete("ALTER TABLE") + READY)
    theirs: dict[bytes, Statement] = {}
    translator = Translator(link, theirs)
    out = translator.feed([parse(b"s1", b"select * from t"), SYNC])
    assert theirs[b"s1"].key != old_key and not translator.direct  # parsed, not answered
    assert theirs[b"s1"].key.encode() in out


@pytest.mark.parametrize("way", ["whole", "bytes", "split"])
def test_ddl_command_tags_move_the_schema_generation(way: str) -> None:
    reply = (m.command_complete("BEGIN") + m.ready_for_query(b"T")
             + m.command_complete("CREATE TABLE") + m.ready_for_query(b"T")
             + m.command_complete("COMMIT") + READY
             + m.command_complete("SELECT 1") + READY)
    for tracked in (False, True):
        stream = ServerStream(lambda *a: None)
        if tracked:
            link = LinkState(10)
            stream.track(link)
            Translator(link, {}).feed([(ord("Q"), m.query("begin; create table x(); commit"))])
        before = schema_generation()
        chunks = {"whole": [reply], "bytes": [reply[i:i + 1] for i in range(len(reply))],
                  "split": [reply[:17], reply[17:33], reply[33:]]}[way]
        out = b"".join(stream.feed(chunk) for chunk in chunks)
        assert out == reply
        assert schema_generation() == before + 2  # at the command, and at its commit
    before = schema_generation()
    stream = ServerStream(lambda *a: None)
    stream.feed(m.command_complete("SELECT 3") + m.command_complete("INSERT 0 1") + READY)
    assert schema_generation() == before


def test_key_names_the_generation() -> None:
    key = statement_key(b"select 1", b"\0\0")
    assert len(key) < 64 and key.startswith("pgusher_")
    ServerStream(lambda *a: None).feed(m.command_complete("DROP TABLE") + READY)
    assert statement_key(b"select 1", b"\0\0") != key


def test_parse_elsewhere_pins_the_parameter_types() -> None:
    known = KnownStatements()
    mine: dict[bytes, Statement] = {}
    link = LinkState(10, known)
    Translator(link, mine).feed([parse(b"ins", b"insert into t values ($1)"), SYNC])
    stream_for(link).feed(PARSE_OK + params(1082) + NO_DATA + READY)
    other = LinkState(10, known)
    out = Translator(other, mine).feed([bind(b"ins"), EXECUTE, SYNC])
    key = mine[b"ins"].key.encode()
    pinned = m.message(b"P", key + b"\0insert into t values ($1)\0" + struct.pack("!hi", 1, 1082))
    assert out.startswith(pinned)
    assert not other.held  # no result row: nothing to check, nothing held


def test_describe_without_rows_answered_from_what_was_learned() -> None:
    """PostgreSQL does not analyse a statement again to describe it when it returns no rows
    (its table may be gone): neither does the pooler on a server that lacks it."""
    known = KnownStatements()
    mine: dict[bytes, Statement] = {}
    link = LinkState(10, known)
    Translator(link, mine).feed([parse(b"ins", b"insert into t values ($1)"), SYNC])
    stream_for(link).feed(PARSE_OK + params(1082) + NO_DATA + READY)
    other = LinkState(10, known)
    translator = Translator(other, mine)
    assert translator.feed([describe(b"ins"), SYNC]) == m.SYNC
    assert translator.direct == params(1082) + NO_DATA


def test_fresh_parse_that_finds_a_changed_row_goes_on_under_its_own_key() -> None:
    """A schema change the pooler did not see: a client's own Parse of a text the pool knows
    gives another result row. That Parse is fresh, as on a direct connection, so the client
    uses it; the pool's older statements of that text are stale from now on."""
    known = KnownStatements()
    mine: dict[bytes, Statement] = {}
    first_server(known, mine, INT_ROW)
    key = mine[b"s1"].key
    other = LinkState(10, known)
    stream = stream_for(other)
    theirs: dict[bytes, Statement] = {}
    now = Translator(other, theirs).feed([parse(b"s1", b"select * from t"), describe(b"s1"),
                                          SYNC])
    assert now.startswith(m.message(b"P", key.encode() + b"\0select * from t\0\0\0"))
    assert other.held and theirs[b"s1"].key == key
    assert stream.feed(PARSE_OK + params() + TWO_ROW) == PARSE_OK
    assert key in known.stale and theirs[b"s1"].key != key  # its own key from now on
    released, other.release = other.release, b""
    assert released == m.message(b"D", b"S" + key.encode() + b"\0") + m.SYNC
    assert stream.feed(params() + TWO_ROW + READY) == params() + TWO_ROW + READY
    out = Translator(other, theirs).feed([bind(b"s1"), EXECUTE, SYNC])
    assert theirs[b"s1"].key.encode() in out and not other.held  # parsed again, learned anew
    # Another client's statement of the old key now fails, as PostgreSQL would fail it.
    assert b"pgusher_error" in Translator(other, mine).feed([bind(b"s1"), EXECUTE, SYNC])
