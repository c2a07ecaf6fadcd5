"""Messages longer than the client stream's ``stream_from``: streamed in pieces, never held
whole, and rewritten from their heads alone (protocol/streamed.py)."""

from __future__ import annotations

import itertools
import struct

import pytest

from pgusher.protocol import messages as m
from pgusher.protocol.client_stream import BIG, NAMED_PARSE_LIMIT, ClientStream
from pgusher.protocol.framing import ServerStream
from pgusher.protocol.link import LinkState
from pgusher.protocol.prepared import T_FAIL, Statement, statement_key
from pgusher.protocol.session import OPAQUE
from pgusher.protocol.translator import Translator

STREAM_FROM = 64 * 1024
PIECE = 1 << 20


def header(kind: bytes, body_len: int) -> bytes:
    return kind + struct.pack("!i", 4 + body_len)


def test_huge_bind_streams_piece_by_piece_and_nothing_accumulates() -> None:
    stream = ClientStream(stream_from=STREAM_FROM)
    # Just under 1 GiB of parameter (PostgreSQL takes no longer message): 1023 pieces of
    # 1 MiB, never joined.
    size = (1 << 30) - (1 << 20)
    head_body = b"\0\0" + struct.pack("!hhi", 0, 1, size)
    tail = b"\0\0"
    start = header(b"B", len(head_body) + size + len(tail)) + head_body
    piece = b"y" * PIECE
    msgs = stream.feed_messages(start)
    assert msgs == [(BIG | ord("B"), start)]
    assert stream.mid_message and stream.unsynced
    for _ in range(size // PIECE):
        msgs = stream.feed_messages(piece)
        assert len(msgs) == 1
        kind, out = msgs[0]
        assert kind == 0 and out is piece  # the very object that came in: no copy
        assert stream._pending == b""
    after = tail + m.message(b"E", b"\0\0\0\0\0") + m.SYNC
    msgs = stream.feed_messages(after)
    assert msgs == [(0, tail), (ord("E"), after[2:12]), (ord("S"), m.SYNC)]
    assert stream.expect == 1 and not stream.unsynced and stream.at_boundary


def test_huge_query_in_odd_pieces_comes_out_as_it_went_in() -> None:
    stream = ClientStream(stream_from=STREAM_FROM)
    text = b"select length('" + b"x" * (3 * PIECE + 12345) + b"')\0"
    data = header(b"Q", len(text)) + text + m.query("select 1")
    cuts = [0, 3, 7, 70000, 500000, 500001, PIECE, PIECE + 17, len(data)]
    got: list[tuple[int, bytes]] = []
    expect = 0
    held = 0
    for a, b in itertools.pairwise(cuts):
        got += stream.feed_messages(data[a:b])
        expect += stream.expect
        held = max(held, len(stream._pending))
    assert held < 5  # only a cut header is ever held
    assert got[0][0] == BIG | ord("Q")
    assert all(kind == 0 for kind, _ in got[1:-1])
    assert got[-1] == (ord("Q"), m.query("select 1"))
    assert b"".join(piece for _, piece in got) == data
    assert expect == 2 and stream.at_boundary


def test_first_chunk_split_inside_the_header() -> None:
    stream = ClientStream(stream_from=STREAM_FROM)
    text = b"x" * (STREAM_FROM * 2) + b"\0"
    data = header(b"Q", len(text)) + text
    got: list[tuple[int, bytes]] = []
    for part in (data[:3], data[3:5], data[5:1000], data[1000:]):
        got += stream.feed_messages(part)
    assert got[0] == (BIG | ord("Q"), data[:5])  # a Query's head is its header
    assert [kind for kind, _ in got[1:]] == [0, 0]
    assert b"".join(piece for _, piece in got) == data
    assert stream.expect == 0 and stream.at_boundary


@pytest.mark.parametrize("way", ["whole", "bytes"])
def test_bind_head_waits_for_its_names_only(way: str) -> None:
    stream = ClientStream(stream_from=64)
    body = b"portal\0stmt\0" + b"\0\0\0\x01" + struct.pack("!i", 300) + b"z" * 300 + b"\0\0"
    data = header(b"B", len(body)) + body
    parts = [data] if way == "whole" else [data[i:i + 1] for i in range(len(data))]
    got: list[tuple[int, bytes]] = []
    for part in parts:
        got += stream.feed_messages(part)
        assert len(stream._pending) < 5 + 64
    assert got[0][0] == BIG | ord("B")
    assert got[0][1].startswith(data[:17])  # header and both names
    assert b"".join(piece for _, piece in got) == data


def test_short_messages_are_still_whole() -> None:
    stream = ClientStream(stream_from=STREAM_FROM)
    q = m.query("select " + "1" * 1000)
    assert stream.feed_messages(q[:10]) == []
    assert stream.feed_messages(q[10:]) == [(ord("Q"), q)]


def test_max_packet_size_still_applies_to_streamed_messages() -> None:
    stream = ClientStream(max_size=STREAM_FROM * 4, stream_from=STREAM_FROM)
    with pytest.raises(Exception, match="invalid client message length"):
        stream.feed_messages(header(b"Q", STREAM_FROM * 4) + b"x" * 100)


# ---- the Translator given heads


def streamed(msg: bytes, cut: int) -> list[tuple[int, bytes]]:
    """``msg`` as feed_messages hands it over with a tiny stream_from, cut after ``cut``."""
    stream = ClientStream(stream_from=16)
    return stream.feed_messages(msg[:cut]) + stream.feed_messages(msg[cut:])


def prepared(link: LinkState) -> dict[bytes, Statement]:
    """A client's statement s1, parsed and answered (so a Bind to it need not wait)."""
    mine: dict[bytes, Statement] = {}
    parse = m.message(b"P", b"s1\0select length($1)\0\0\0")
    Translator(link, mine).feed([(ord("P"), parse), (ord("S"), m.SYNC)])
    stream = ServerStream(lambda *a: None)
    stream.track(link)
    learned = m.message(b"t", b"\0\x01\0\0\0\x19") + m.message(b"n")
    stream.feed(m.message(b"1") + learned + m.message(b"Z", b"I"))
    assert not link.tags
    return mine


def bind_to(name: bytes, value: bytes) -> bytes:
    return m.message(b"B", b"p\0" + name + b"\0\0\0\0\x01" + struct.pack("!i", len(value))
                     + value + b"\0\0")


def test_long_bind_to_a_named_statement_is_renamed_from_its_head() -> None:
    value = b"v" * 200
    msg = bind_to(b"s1", value)
    whole_link, long_link = LinkState(10), LinkState(10)
    whole = Translator(whole_link, prepared(whole_link)).feed([(ord("B"), msg)])
    items = streamed(msg, 40)
    assert items[0][0] == BIG | ord("B") and items[1][0] == 0
    tr = Translator(long_link, prepared(long_link))
    out = tr.feed(items[:1]) + tr.feed(items[1:])
    assert out == whole
    key = statement_key(b"select length($1)", b"\0\0").encode()
    assert key + b"\0" in out and b"\0s1\0" not in out
    assert struct.unpack_from("!i", out, 1)[0] == len(out) - 1


def test_long_bind_to_an_unknown_statement_fails_like_a_short_one() -> None:
    link = LinkState(10)
    items = streamed(bind_to(b"nope", b"v" * 200), 30)
    out = Translator(link, {}).feed(items)
    assert link.tags[-1].kind == T_FAIL and b"26000" in link.tags[-1].data
    assert out.startswith(b"P")  # the failing Parse first, then the Bind the server skips
    bind_at = out.index(b"B\0")
    assert b"nope" not in out[bind_at:]
    assert struct.unpack_from("!i", out, bind_at + 1)[0] == len(out) - bind_at - 1


def test_long_bind_of_the_unnamed_deallocate_runs_it_at_execute_like_a_short_one() -> None:
    """The portal of a long Bind inherits what the unnamed statement does to the client's
    names (here an SQL DEALLOCATE of s1), exactly as the portal of a short Bind does."""
    outs = []
    for cut in (None, 12):
        link = LinkState(10)
        mine = prepared(link)
        parse = m.message(b"P", b"\0deallocate s1\0\0\0")
        bind = m.message(b"B", b"\0\0\0\0\0\0" + b"\0" * 300)  # long only by its padding
        execute = m.message(b"E", b"\0\0\0\0\0")
        tr = Translator(link, mine)
        out = tr.feed([(ord("P"), parse)])
        out += (tr.feed([(ord("B"), bind)]) if cut is None
                else tr.feed(streamed(bind, cut)))
        assert b"" in link.portals
        out += tr.feed([(ord("E"), execute), (ord("S"), m.SYNC)])
        assert not link.portals and b"s1" not in mine  # DEALLOCATE ran at Execute
        outs.append(out)
    assert outs[0] == outs[1]


def test_long_named_parse_is_refused_and_the_unnamed_one_is_opaque() -> None:
    text = b"select '" + b"t" * NAMED_PARSE_LIMIT + b"'"
    named = m.message(b"P", b"big\0" + text + b"\0\0\0")
    link = LinkState(10)
    mine: dict[bytes, Statement] = {}
    tr = Translator(link, mine)
    out = tr.feed(streamed(named, 50))
    assert link.tags[-1].kind == T_FAIL and b"54000" in link.tags[-1].data
    assert out.endswith(named) and b"big" not in mine
    unnamed = m.message(b"P", b"\0" + text + b"\0\0\0")
    tr = Translator(LinkState(10), mine)
    assert tr.feed(streamed(unnamed, 50)) == unnamed
    assert tr.effects and tr.effects[0][0] == OPAQUE


def test_long_query_goes_as_it_came_and_is_read_back() -> None:
    msg = m.query("select length('" + "q" * 300 + "')")
    link = LinkState(10)
    tr = Translator(link, {})
    assert tr.feed(streamed(msg, 100)) == msg
    assert tr.effects == [(OPAQUE, "a text too long to read", "")]
    assert link.needs_reset and len(link.tags) == 1
    stream = ServerStream(lambda *a: None)
    stream.track(link)
    reply = m.command_complete("SELECT 1") + m.ready_for_query(b"I")
    assert stream.feed(reply) == reply and not link.tags


def test_named_parse_under_the_limit_is_held_whole_without_copying_each_chunk() -> None:
    stream = ClientStream(stream_from=STREAM_FROM)
    msg = m.message(b"P", b"s1\0select '" + b"t" * (4 * STREAM_FROM) + b"'\0\0\0")
    got: list[tuple[int, bytes]] = []
    for i in range(0, len(msg), 3):
        got += stream.feed_messages(msg[i:i + 3])
        assert len(stream._pending) <= 6  # later chunks are kept apart, joined once
    assert got == [(ord("P"), msg)]
    assert stream.at_boundary and not stream._parts
    unnamed = m.message(b"P", b"\0select '" + b"t" * (4 * STREAM_FROM) + b"'\0\0\0")
    got = stream.feed_messages(unnamed[:5]) + stream.feed_messages(unnamed[5:])
    assert got[0][0] == BIG | ord("P")
    assert b"".join(piece for _, piece in got) == unnamed


def test_message_held_until_whole_is_joined_once() -> None:
    stream = ClientStream(stream_from=STREAM_FROM)
    q = m.query("select " + "1" * (STREAM_FROM - 100))
    out: list[tuple[int, bytes]] = []
    for i in range(0, len(q), 7):
        out += stream.feed_messages(q[i:i + 7])
        assert len(stream._pending) <= 7
    assert out == [(ord("Q"), q)]


def test_server_error_held_until_whole_is_joined_once() -> None:
    stream = ServerStream(lambda *a: None)
    error = m.error_response("ERROR", "P0001", "e" * (8 * PIECE))
    out = b""
    for i in range(0, len(error), 65536):
        out += stream.feed(error[i:i + 65536])
        assert len(stream.held) <= 65536  # the first piece; the others are kept apart
    ready = m.ready_for_query(b"I")
    out += stream.feed(ready[:3]) + stream.feed(ready[3:])
    assert out == error + ready and stream.at_boundary and stream.fatal is None
