"""Statement rewriting and reply matching, driven message by message with no server."""

from __future__ import annotations

from pgusher.protocol import messages as m
from pgusher.protocol.framing import ServerStream
from pgusher.protocol.prepared import (
    LinkState,
    Statement,
    Translator,
    answer_without_server,
    statement_key,
)


def parse(name: bytes, query: bytes) -> tuple[int, bytes]:
    return ord("P"), m.message(b"P", name + b"\0" + query + b"\0\0\0")


def bind(name: bytes) -> tuple[int, bytes]:
    return ord("B"), m.message(b"B", b"\0" + name + b"\0\0\0\0\0\0\0")


SYNC = (ord("S"), m.SYNC)
EXECUTE = (ord("E"), m.message(b"E", b"\0\0\0\0\0"))
PARSE_OK = m.message(b"1")
BIND_OK = m.message(b"2")


def stream_for(link: LinkState) -> ServerStream:
    stream = ServerStream(lambda *a: None)
    stream.track(link)
    return stream


def test_named_parse_is_renamed_and_bind_follows() -> None:
    link = LinkState(10)
    mine: dict[bytes, Statement] = {}
    out = Translator(link, mine).feed([parse(b"s1", b"select 1"), bind(b"s1"), EXECUTE, SYNC])
    key = statement_key(b"select 1", b"\0\0").encode()
    assert key in out and b"s1\0" not in out
    assert list(link.statements) == [key.decode()]


def test_statement_prepared_on_demand_and_its_reply_swallowed() -> None:
    first = LinkState(10)
    mine: dict[bytes, Statement] = {}
    Translator(first, mine).feed([parse(b"s1", b"select 1"), SYNC])
    other = LinkState(10)  # another server that never saw s1
    out = Translator(other, mine).feed([bind(b"s1"), EXECUTE, SYNC])
    assert out.startswith(b"P")  # a Parse slipped in before the Bind
    stream = stream_for(other)
    reply = (PARSE_OK + BIND_OK + m.command_complete("SELECT 1") + m.ready_for_query(b"I"))
    assert stream.feed(reply) == BIND_OK + m.command_complete("SELECT 1") + m.ready_for_query(b"I")
    assert not other.tags


def test_parse_of_known_statement_is_answered_in_order() -> None:
    link = LinkState(10)
    a: dict[bytes, Statement] = {}
    b: dict[bytes, Statement] = {}
    Translator(link, a).feed([parse(b"x", b"select 1"), SYNC])
    stream = stream_for(link)
    stream.feed(PARSE_OK + m.ready_for_query(b"I"))
    translator = Translator(link, b)
    out = translator.feed([parse(b"y", b"select 1"), SYNC])
    assert out == m.SYNC and translator.direct == PARSE_OK  # nothing ahead of it


def test_duplicate_name_becomes_an_in_sequence_error() -> None:
    link = LinkState(10)
    mine: dict[bytes, Statement] = {}
    Translator(link, mine).feed([parse(b"d", b"select 1"), SYNC])
    stream = stream_for(link)
    stream.feed(PARSE_OK + m.ready_for_query(b"I"))
    out = Translator(link, mine).feed([parse(b"d", b"select 2"), SYNC])
    assert b"pgusher_error" in out
    server_error = m.error_response("ERROR", "42601", "syntax error")
    shown = stream.feed(server_error + m.ready_for_query(b"I"))
    assert b"42P05" in shown and b"42601" not in shown
    assert shown.endswith(m.ready_for_query(b"I"))


def test_failed_parse_registers_nothing() -> None:
    link = LinkState(10)
    mine: dict[bytes, Statement] = {}
    Translator(link, mine).feed([parse(b"bad", b"select from"), bind(b"bad"), SYNC])
    stream = stream_for(link)
    stream.feed(m.error_response("ERROR", "42601", "syntax error") + m.ready_for_query(b"I"))
    assert b"bad" not in mine and not link.statements and not link.tags


def test_eviction_closes_the_oldest() -> None:
    link = LinkState(2)
    mine: dict[bytes, Statement] = {}
    out = Translator(link, mine).feed([parse(b"a", b"select 1"), parse(b"b", b"select 2"),
                                       parse(b"c", b"select 3"), SYNC])
    assert out.count(b"C\0\0\0") == 1 and len(link.statements) == 2


def test_idle_client_answered_without_server() -> None:
    known = {statement_key(b"select 1", b"\0\0")}
    mine: dict[bytes, Statement] = {}
    reply = answer_without_server([parse(b"p", b"select 1"), SYNC], mine, known)
    assert reply == PARSE_OK + m.ready_for_query(b"I") and b"p" in mine
    assert answer_without_server([parse(b"q", b"select 2"), SYNC], mine, known) is None
    assert b"q" not in mine


def test_idle_client_messages_without_reply_need_no_server() -> None:
    """Flush, or copy messages after the COPY ended, from a client with no server: no server
    would answer them, so no ReadyForQuery would ever release one linked for them."""
    flush = (ord("H"), m.message(b"H"))
    copy_data = (ord("d"), m.message(b"d", b"1\n"))
    copy_piece = (0, b"2\n")  # the rest of a CopyData cut by the chunk
    copy_done = (ord("c"), m.message(b"c"))
    copy_fail = (ord("f"), m.message(b"f", b"stop\0"))
    mine: dict[bytes, Statement] = {}
    assert answer_without_server([flush], mine, set()) == b""
    assert answer_without_server([copy_piece, copy_data, copy_done], mine, set()) == b""
    assert answer_without_server([copy_fail, flush], mine, set()) == b""
    assert answer_without_server([flush, SYNC], mine, set()) == m.ready_for_query(b"I")
    assert answer_without_server([flush, bind(b"p"), EXECUTE, SYNC], mine, set()) is None
    assert not mine
