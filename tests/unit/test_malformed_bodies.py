"""Client messages whose bodies cannot be read (a string without its NUL, bytes after it).

The rewriting code must not raise on them. Such a message goes to the server as it came: the
server cannot read it either, answers with PostgreSQL's own ERROR 08P01 and skips to the
next Sync, exactly as for a client of its own, and the pooler registers nothing for it.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgusher.errors import ProtocolError
from pgusher.protocol import messages as m
from pgusher.protocol.framing import ServerStream
from pgusher.protocol.link import LinkState
from pgusher.protocol.prepared import (
    KnownStatements,
    SqlStatement,
    Statement,
    split_parse,
    split_target,
    statement_key,
)
from pgusher.protocol.shortcuts import answer_without_server, untagged_syncs
from pgusher.protocol.translator import Translator

SYNC = (ord("S"), m.SYNC)
KNOWN = statement_key(b"select 1", b"\0\0")


def _known(*keys: str) -> KnownStatements:
    known = KnownStatements()
    known.update(keys)
    return known


def msg(kind: bytes, body: bytes) -> tuple[int, bytes]:
    return ord(kind), m.message(kind, body)


MALFORMED = [
    msg(b"P", b"s1\0select 1"),
    msg(b"P", b"s1"),
    msg(b"P", b""),
    msg(b"P", b"\0select 1"),
    msg(b"B", b"p1"),
    msg(b"B", b"\0"),
    msg(b"B", b"\0s1"),
    msg(b"B", b""),
    msg(b"D", b""),
    msg(b"D", b"Ss1"),
    msg(b"D", b"Ss1\0x"),
    msg(b"C", b""),
    msg(b"C", b"Ss1"),
    msg(b"C", b"Ss1\0x"),
]
ERROR_REPLY = m.error_response("ERROR", "08P01", "invalid string in message")


def test_split_parse_and_split_target_read_as_postgres_does() -> None:
    assert split_parse(b"s1\0select 1\0\0\0") == (b"s1", b"select 1", b"\0\0")
    assert split_target(m.message(b"D", b"Ss1\0")) == (b"S", b"s1")
    assert split_target(m.message(b"C", b"P\0")) == (b"P", b"")
    for body in (b"", b"s1", b"s1\0select 1"):
        with pytest.raises(ProtocolError, match="invalid string in message"):
            split_parse(body)
    for body, words in ((b"", "no data left"), (b"Ss1", "invalid string"),
                        (b"Ss1\0x", "invalid message format")):
        with pytest.raises(ProtocolError, match=words):
            split_target(m.message(b"D", body))


@pytest.mark.parametrize("bad", MALFORMED, ids=lambda bad: repr(bad[1][5:]))
def test_malformed_message_goes_as_it_came(bad: tuple[int, bytes]) -> None:
    link = LinkState(10, _known(KNOWN))
    link.statements[KNOWN] = None  # the server has "select 1": a misread name would match
    mine: dict[bytes, Statement] = {}
    out = Translator(link, mine).feed([bad, SYNC])
    assert out == bad[1] + m.SYNC
    assert not mine
    # The server's error ends it and nothing is left waiting.
    stream = ServerStream(lambda *a: None)
    stream.track(link)
    reply = ERROR_REPLY + m.ready_for_query(b"I")
    assert stream.feed(reply) == reply
    assert not link.tags and not link.skipping and stream.ready == 1


@pytest.mark.parametrize("bad", MALFORMED, ids=lambda bad: repr(bad[1][5:]))
def test_malformed_message_is_never_answered_without_a_server(bad: tuple[int, bytes]) -> None:
    mine = {b"s1": Statement(KNOWN, b"select 1", b"\0\0")}
    assert answer_without_server([bad, SYNC], mine, {KNOWN}) is None
    assert list(mine) == [b"s1"]
    assert untagged_syncs([bad, SYNC]) in (0, 1)


def test_malformed_query_text_is_not_read() -> None:
    """An SQL PREPARE whose text lacks its NUL is not rewritten into one that works."""
    link = LinkState(10)
    sql: dict[str, SqlStatement] = {}
    bad = msg(b"Q", b"prepare s2 as select 1")
    translator = Translator(link, {}, sql, "q1")
    assert translator.feed([bad]) == bad[1]
    assert not sql and not translator.effects
    trailing = msg(b"Q", b"set search_path = x\0y\0")
    translator = Translator(link, {}, sql, "q1")
    assert translator.feed([trailing]) == trailing[1] and not translator.effects


names = st.sampled_from([b"", b"s1", b"s2", KNOWN.encode(), b"\xff"])
pieces = st.one_of(names, st.just(b"\0"), st.sampled_from([b"S", b"P", b"select 1", b"x"]),
                   st.binary(max_size=8))
bodies = st.lists(pieces, max_size=6).map(b"".join)
client_messages = st.lists(
    st.tuples(st.sampled_from(b"PBDCEQSHFdcf"), bodies).map(
        lambda kb: (kb[0], m.message(bytes([kb[0]]), kb[1]))),
    min_size=1, max_size=10)


@settings(max_examples=200, deadline=None, database=None)
@given(client_messages, client_messages)
def test_rewriting_never_raises(first: list[tuple[int, bytes]],
                                second: list[tuple[int, bytes]]) -> None:
    link = LinkState(3, _known(KNOWN))
    mine: dict[bytes, Statement] = {}
    sql: dict[str, SqlStatement] = {}
    for batch in (first, second):
        untagged_syncs(batch)
        answer_without_server(batch, dict(mine), {KNOWN})
        Translator(link, mine, sql, "q1").feed(batch)
