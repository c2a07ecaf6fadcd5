"""The stream scanners, each case fed whole, byte by byte, and in odd splits."""

from __future__ import annotations

import pytest

from pgusher.errors import ProtocolError
from pgusher.protocol import messages as m
from pgusher.protocol.client_stream import ClientStream
from pgusher.protocol.framing import ServerStream


def splits(data: bytes) -> list[list[bytes]]:
    """The same bytes cut three ways: whole, one byte at a time, and in chunks of 3."""
    return [[data], [data[i:i + 1] for i in range(len(data))],
            [data[i:i + 3] for i in range(0, len(data), 3)]]


class ParamLog:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, bool]] = []

    def __call__(self, name: str, value: str, swallowed: bool) -> None:
        self.seen.append((name, value, swallowed))


def feed_server(stream: ServerStream, chunks: list[bytes]) -> tuple[bytes, int, int]:
    out = b""
    ready = swallowed = 0
    for chunk in chunks:
        out += stream.feed(chunk)
        ready += stream.ready
        swallowed += stream.swallowed
    return out, ready, swallowed


SELECT_REPLY = (m.row_description([("x", 23)]) + m.data_row(["1"]) + m.command_complete("SELECT 1")
                + m.ready_for_query(b"I"))


@pytest.mark.parametrize("way", range(3))
def test_server_forwards_everything_and_counts_ready(way: int) -> None:
    data = SELECT_REPLY + SELECT_REPLY.replace(b"Z\x00\x00\x00\x05I", b"Z\x00\x00\x00\x05T")
    stream = ServerStream(ParamLog())
    out, ready, _ = feed_server(stream, splits(data)[way])
    assert out == data
    assert ready == 2
    assert stream.status == ord("T")
    assert stream.at_boundary


def test_server_whole_chunk_is_forwarded_without_copy() -> None:
    stream = ServerStream(ParamLog())
    assert stream.feed(SELECT_REPLY) is SELECT_REPLY


@pytest.mark.parametrize("way", range(3))
def test_server_swallows_internal_reply(way: int) -> None:
    params = ParamLog()
    internal = (m.parameter_status("TimeZone", "UTC") + m.command_complete("SET")
                + m.error_response("ERROR", "22023", "bad") + m.ready_for_query(b"I"))
    data = internal + SELECT_REPLY
    stream = ServerStream(params)
    stream.swallow = 1
    out, ready, swallowed = feed_server(stream, splits(data)[way])
    assert out == SELECT_REPLY
    assert (ready, swallowed) == (1, 1)
    assert params.seen == [("TimeZone", "UTC", True)]
    assert stream.last_error is not None and stream.last_error["C"] == "22023"


@pytest.mark.parametrize("way", range(3))
def test_server_large_row_streams_through(way: int) -> None:
    big = m.data_row(["x" * 5000])
    data = big + m.command_complete("SELECT 1") + m.ready_for_query(b"I")
    stream = ServerStream(ParamLog())
    out, ready, _ = feed_server(stream, splits(data)[way])
    assert out == data and ready == 1


def test_server_large_swallowed_message_is_dropped_across_chunks() -> None:
    big = m.notice_response("n" * 3000)
    data = big + m.ready_for_query(b"I") + SELECT_REPLY
    stream = ServerStream(ParamLog())
    stream.swallow = 1
    out, ready, swallowed = feed_server(stream, [data[:100], data[100:2000], data[2000:]])
    assert out == SELECT_REPLY and (ready, swallowed) == (1, 1)


def test_server_trailing_partial_message_is_held() -> None:
    stream = ServerStream(ParamLog())
    tail = m.ready_for_query(b"I")[:3]
    out = stream.feed(SELECT_REPLY + tail)
    assert out == SELECT_REPLY and not stream.at_boundary
    assert stream.feed(m.ready_for_query(b"I")[3:]) == m.ready_for_query(b"I")
    assert stream.at_boundary


def test_server_knows_when_the_client_has_half_a_message() -> None:
    big = m.data_row(["x" * 5000])
    stream = ServerStream(ParamLog())
    assert stream.feed(big[:100]) == big[:100]
    assert stream.mid_forward  # the client has the start of the row
    stream.feed(big[100:])
    assert not stream.mid_forward
    held = ServerStream(ParamLog())
    held.feed(SELECT_REPLY + m.ready_for_query(b"I")[:3])
    assert not held.at_boundary and not held.mid_forward  # held back: nothing of it went out
    swallowing = ServerStream(ParamLog())
    swallowing.swallow = 1
    assert swallowing.feed(m.notice_response("n" * 3000)[:100]) == b""
    assert not swallowing.mid_forward  # the pooler's own reply: the client sees none of it


def test_server_param_status_reported_when_not_swallowed() -> None:
    params = ParamLog()
    stream = ServerStream(params)
    data = m.parameter_status("DateStyle", "ISO, DMY") + SELECT_REPLY
    assert stream.feed(data) == data
    assert params.seen == [("DateStyle", "ISO, DMY", False)]


TERMINATED = m.error_response("FATAL", "57P01", "terminating connection due to administrator "
                              "command")


@pytest.mark.parametrize("way", range(3))
@pytest.mark.parametrize("swallow", [0, 1])
def test_server_fatal_is_noticed_and_forwarded(way: int, swallow: int) -> None:
    """A FATAL ends the server's session, whether it follows a reply, interrupts the pooler's
    own query, or comes alone; with trailing bytes after it too."""
    data = SELECT_REPLY + m.data_row(["2"]) + TERMINATED + b"\0\0"
    stream = ServerStream(ParamLog())
    if swallow:
        data = m.command_complete("SET") + m.ready_for_query(b"I") + data
    stream.swallow = swallow
    out, ready, _ = feed_server(stream, splits(data)[way])
    assert stream.fatal is not None and stream.fatal["C"] == "57P01"
    assert out == SELECT_REPLY + m.data_row(["2"]) + TERMINATED and ready == 1


@pytest.mark.parametrize("way", range(3))
def test_server_error_that_is_not_fatal(way: int) -> None:
    data = m.error_response("ERROR", "22012", "division by zero") + m.ready_for_query(b"I")
    # Only the untranslated severity counts: 'S' may be FATAL in some language.
    translated = m.message(b"E", b"SFATAL\0VERROR\0C42P01\0Mx\0\0") + m.ready_for_query(b"I")
    stream = ServerStream(ParamLog())
    out, ready, _ = feed_server(stream, splits(data + translated)[way])
    assert out == data + translated and ready == 2 and stream.fatal is None


def test_server_fatal_of_an_old_server_without_v_field() -> None:
    stream = ServerStream(ParamLog())
    stream.feed(m.message(b"E", b"SPANIC\0C58000\0Mx\0\0"))
    assert stream.fatal is not None


def test_server_bad_length_is_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        ServerStream(ParamLog()).feed(b"D\x00\x00\x00\x02xx")


def feed_client(stream: ClientStream, chunks: list[bytes]) -> tuple[bytes, int]:
    out = b""
    expect = 0
    for chunk in chunks:
        out += stream.feed(chunk)
        expect += stream.expect
    return out, expect


EXTENDED = (m.message(b"P", b"\0select 1\0\0\0") + m.message(b"B", b"\0\0\0\0\0\0\0\0")
            + m.message(b"E", b"\0\0\0\0\0") + m.SYNC)


@pytest.mark.parametrize("way", range(3))
def test_client_counts_queries_and_syncs(way: int) -> None:
    data = m.query("select 1") + EXTENDED + EXTENDED
    stream = ClientStream()
    out, expect = feed_client(stream, splits(data)[way])
    assert out == data and expect == 3 and not stream.unsynced


@pytest.mark.parametrize("way", range(3))
def test_client_unsynced_until_sync(way: int) -> None:
    data = EXTENDED[:-5] + m.message(b"H")
    stream = ClientStream()
    out, expect = feed_client(stream, splits(data)[way])
    assert out == data and expect == 0 and stream.unsynced
    stream.feed(m.SYNC)
    assert stream.expect == 1 and not stream.unsynced


@pytest.mark.parametrize("way", range(3))
def test_client_terminate_is_not_forwarded(way: int) -> None:
    data = m.query("select 1") + m.TERMINATE + b"garbage after terminate"
    stream = ClientStream()
    out, expect = feed_client(stream, splits(data)[way])
    assert out == m.query("select 1") and expect == 1 and stream.terminated


def test_client_partial_header_is_held_back() -> None:
    stream = ClientStream()
    q = m.query("select 1")
    assert stream.feed(q + q[:2]) == q
    assert stream.feed(q[2:]) == q


def test_client_copy_data_streams() -> None:
    data = m.message(b"d", b"1\t2\n" * 1000) + m.message(b"c")
    stream = ClientStream()
    out, expect = feed_client(stream, [data[:7], data[7:3000], data[3000:]])
    assert out == data and expect == 0


@pytest.mark.parametrize("bad", [
    b"?\x00\x00\x00\x04",
    b"Q\x00\x00\x00\x01",
    b"p\x00\x00\x00\x09junk\x00",  # PasswordMessage: only during authentication
])
def test_client_malformed_is_protocol_error(bad: bytes) -> None:
    with pytest.raises(ProtocolError):
        ClientStream().feed(bad)
    with pytest.raises(ProtocolError):
        ClientStream().feed_messages(m.query("select 1") + bad)


def test_client_mid_message_only_while_a_message_is_partly_let_through() -> None:
    copy = m.message(b"d", b"x" * 100)
    stream = ClientStream()
    stream.feed(copy[:3])  # a header is held back, nothing let through
    assert not stream.mid_message and not stream.at_boundary
    stream.feed(copy[3:50])
    assert stream.mid_message
    stream.feed(copy[50:])
    assert not stream.mid_message and stream.at_boundary
    stream = ClientStream()
    assert stream.feed_messages(copy[:50]) == [(0, copy[:50])] and stream.mid_message
    assert stream.feed_messages(copy[50:]) == [(0, copy[50:])] and not stream.mid_message


def test_client_max_packet_size() -> None:
    stream = ClientStream(max_size=100)
    with pytest.raises(ProtocolError):
        stream.feed(m.query("x" * 200))


def feed_client_messages(stream: ClientStream,
                         chunks: list[bytes]) -> tuple[list[tuple[int, bytes]], int]:
    out: list[tuple[int, bytes]] = []
    expect = 0
    for chunk in chunks:
        out += stream.feed_messages(chunk)
        expect += stream.expect
    return out, expect


@pytest.mark.parametrize("way", range(3))
def test_client_messages_whole_and_counted(way: int) -> None:
    data = m.query("select 1") + EXTENDED + EXTENDED[:-5] + m.message(b"H")
    stream = ClientStream()
    out, expect = feed_client_messages(stream, splits(data)[way])
    assert b"".join(msg for _, msg in out) == data
    assert [kind for kind, _ in out] == list(b"QPBESPBEH")
    assert expect == 2 and stream.unsynced and stream.at_boundary


@pytest.mark.parametrize("way", range(3))
def test_client_messages_stop_at_terminate(way: int) -> None:
    data = EXTENDED + m.TERMINATE + b"garbage after terminate"
    stream = ClientStream()
    out, expect = feed_client_messages(stream, splits(data)[way])
    assert b"".join(msg for _, msg in out) == EXTENDED and expect == 1 and stream.terminated


def test_client_messages_copy_data_streams_in_pieces() -> None:
    copy = m.message(b"d", b"1\t2\n" * 1000)
    data = copy + m.message(b"c") + m.SYNC
    stream = ClientStream()
    out, expect = feed_client_messages(stream, [data[:7], data[7:3000], data[3000:]])
    assert b"".join(msg for _, msg in out) == data and expect == 1
    assert [kind for kind, _ in out] == [0, 0, 0, ord("c"), ord("S")]


CLIENT_MIX = (m.query("select 1") + EXTENDED + m.message(b"d", b"row\n") + m.message(b"c")
              + m.message(b"H") + m.query(""))


@pytest.mark.parametrize("way", range(3))
def test_client_mix_whole_byte_by_byte_and_in_threes(way: int) -> None:
    stream = ClientStream()
    out, expect = feed_client(stream, splits(CLIENT_MIX)[way])
    assert out == CLIENT_MIX and expect == 3 and stream.at_boundary
    stream = ClientStream()
    msgs, expect = feed_client_messages(stream, splits(CLIENT_MIX)[way])
    assert b"".join(msg for _, msg in msgs) == CLIENT_MIX and expect == 3
    assert stream.at_boundary


@pytest.mark.parametrize("cut", range(1, 5))
def test_client_header_cut_anywhere(cut: int) -> None:
    """A header split over two reads (the first byte alone, as on a slow network)."""
    q = m.query("select 1")
    stream = ClientStream()
    assert stream.feed(q[:cut]) == b"" and stream.expect == 0 and not stream.at_boundary
    assert stream.feed(q[cut:]) == q and stream.expect == 1 and stream.at_boundary
    stream = ClientStream()
    assert stream.feed_messages(q[:cut]) == [] and stream.expect == 0
    assert stream.feed_messages(q[cut:]) == [(ord("Q"), q)] and stream.expect == 1
    assert stream.at_boundary


@pytest.mark.parametrize("tail", range(1, 14))
def test_client_trailing_bytes_are_held_until_whole(tail: int) -> None:
    """Whole messages go at once; a following message's first bytes wait for the rest."""
    q = m.query("select 1")
    stream = ClientStream()
    first = stream.feed(EXTENDED + q[:tail])
    if tail < 5:  # a header is held until whole
        assert first == EXTENDED and stream.expect == 1
        assert stream.feed(q[tail:]) == q and stream.expect == 1
    else:  # a body streams
        assert first == EXTENDED + q[:tail] and stream.expect == 2
        assert stream.feed(q[tail:]) == q[tail:] and stream.expect == 0
    assert stream.at_boundary
    stream = ClientStream()
    msgs = stream.feed_messages(EXTENDED + q[:tail])
    assert b"".join(msg for _, msg in msgs) == EXTENDED and stream.expect == 1
    assert not stream.at_boundary
    assert stream.feed_messages(q[tail:]) == [(ord("Q"), q)] and stream.expect == 1
    assert stream.at_boundary
