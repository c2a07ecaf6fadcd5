"""The bounded message reader: whole, byte by byte, in odd splits, with trailing bytes, and
every bad length."""

from __future__ import annotations

import pytest

from pgusher.errors import ProtocolError
from pgusher.protocol import messages as m
from pgusher.protocol.reader import MessageReader


def splits(data: bytes) -> list[list[bytes]]:
    """The same bytes cut three ways: whole, one byte at a time, and in chunks of 3."""
    return [[data], [data[i:i + 1] for i in range(len(data))],
            [data[i:i + 3] for i in range(0, len(data), 3)]]


TYPED = [(ord("R"), m.INT32.pack(0)), (ord("S"), b"TimeZone\0UTC\0"), (ord("X"), b""),
         (ord("Z"), b"I")]
TYPED_BYTES = b"".join(m.message(bytes([k]), body) for k, body in TYPED)
STARTUP = m.startup_message({"user": "u", "database": "d"})
SSL_REQUEST = m.INT32.pack(8) + m.INT32.pack(m.SSL_REQUEST_CODE)


@pytest.mark.parametrize("way", range(3))
def test_typed_messages_in_any_split(way: int) -> None:
    reader = MessageReader(1000)
    got = [msg for chunk in splits(TYPED_BYTES)[way] for msg in reader.feed(chunk)]
    assert got == TYPED
    assert reader.pending == 0
    assert reader.take_rest() == b""


@pytest.mark.parametrize("way", range(3))
def test_startup_packets_in_any_split(way: int) -> None:
    reader = MessageReader(m.MAX_STARTUP_PACKET, typed=False)
    got = [msg for chunk in splits(SSL_REQUEST + STARTUP)[way] for msg in reader.feed(chunk)]
    assert got == [(0, m.INT32.pack(m.SSL_REQUEST_CODE)), (0, STARTUP[4:])]
    assert m.parse_startup(got[1][1]) == (m.PROTOCOL_3_0, {"user": "u", "database": "d"})


@pytest.mark.parametrize("tail", [b"Z", b"Z\0\0", b"Z\0\0\0\x05", b"Z\0\0\0\x09abc"])
def test_unfinished_tail_is_kept(tail: bytes) -> None:
    reader = MessageReader(1000)
    assert reader.feed(TYPED_BYTES + tail) == TYPED
    assert reader.pending == len(tail)
    assert reader.next() is None
    assert reader.take_rest() == tail
    assert reader.pending == 0


def test_tail_completed_later() -> None:
    reader = MessageReader(1000)
    whole = m.message(b"D", b"x" * 100)
    assert reader.feed(TYPED_BYTES + whole[:50]) == TYPED
    assert reader.feed(whole[50:99]) == []
    assert reader.feed(whole[99:] + b"Q") == [(ord("D"), b"x" * 100)]
    assert reader.take_rest() == b"Q"


def test_one_at_a_time_leaves_the_rest() -> None:
    """A caller whose state changes with a message takes one and leaves the others."""
    reader = MessageReader(m.MAX_STARTUP_PACKET, typed=False)
    reader.push(SSL_REQUEST + b"\x16\x03\x01")  # an SSLRequest with bytes behind it
    assert reader.next() == (0, m.INT32.pack(m.SSL_REQUEST_CODE))
    assert reader.pending == 3
    assert reader.take_rest() == b"\x16\x03\x01"
    assert reader.next() is None


@pytest.mark.parametrize("way", range(3))
def test_next_byte_by_byte(way: int) -> None:
    reader = MessageReader(1000)
    got = []
    for chunk in splits(TYPED_BYTES)[way]:
        reader.push(chunk)
        while (msg := reader.next()) is not None:
            got.append(msg)
    assert got == TYPED


def test_header_is_seen_before_the_body() -> None:
    reader = MessageReader(10)
    reader.push(b"Q\0\0")
    assert reader.header() is None
    reader.push(b"\x10\0")  # 4096: over the limit, but header() does not judge
    assert reader.header() == (ord("Q"), 4096)
    untyped = MessageReader(100, typed=False)
    untyped.push(b"\0\0\0")
    assert untyped.header() is None
    untyped.push(b"\x08")
    assert untyped.header() == (0, 8)


@pytest.mark.parametrize("length", [-2**31, -5, -1, 0, 1, 2, 3])
def test_typed_length_below_minimum(length: int) -> None:
    reader = MessageReader(1000)
    data = b"Q" + m.INT32.pack(length) + b"select 1"
    with pytest.raises(ProtocolError, match=rf"invalid length {length} of message type 'Q'"):
        reader.feed(data)
    # The bytes stay; asking again fails again rather than looping or skipping.
    assert reader.pending == len(data)
    with pytest.raises(ProtocolError):
        reader.next()


@pytest.mark.parametrize("length", [-2**31, -8, -1, 0, 1, 4, 7])
def test_startup_length_below_minimum(length: int) -> None:
    reader = MessageReader(m.MAX_STARTUP_PACKET, typed=False)
    with pytest.raises(ProtocolError, match=rf"invalid length {length} of startup packet"):
        reader.feed(m.INT32.pack(length) + b"\0" * 16)


def test_typed_length_four_is_an_empty_body() -> None:
    assert MessageReader(4).feed(b"S\0\0\0\x04") == [(ord("S"), b"")]


def test_startup_length_eight_is_a_bare_code() -> None:
    assert MessageReader(8, typed=False).feed(SSL_REQUEST) == [
        (0, m.INT32.pack(m.SSL_REQUEST_CODE))]


@pytest.mark.parametrize("typed", [True, False])
def test_max_size_bound(typed: bool) -> None:
    limit = 100
    at_limit = (b"D" + m.INT32.pack(limit) + b"x" * (limit - 4) if typed
                else m.INT32.pack(limit) + b"x" * (limit - 4))
    assert len(MessageReader(limit, typed).feed(at_limit)) == 1
    over = (b"D" + m.INT32.pack(limit + 1) if typed else m.INT32.pack(limit + 1))
    reader = MessageReader(limit, typed)
    # Refused from the header alone: no body is waited for, nothing is held beyond it.
    with pytest.raises(ProtocolError, match=f"length {limit + 1} exceeds the limit of {limit}"):
        reader.feed(over)
    with pytest.raises(ProtocolError, match="exceeds"):
        MessageReader(limit, typed).feed(m.INT32.pack(2**31 - 1) if not typed
                                         else b"D" + m.INT32.pack(2**31 - 1))


def test_bad_length_after_good_messages_one_at_a_time() -> None:
    reader = MessageReader(1000)
    reader.push(TYPED_BYTES + b"E\0\0\0\0")
    got = []
    with pytest.raises(ProtocolError):
        while (msg := reader.next()) is not None:
            got.append(msg)
    assert got == TYPED


def test_many_chunks_of_one_large_message() -> None:
    size = 200_000
    body = bytes(range(256)) * (size // 256)
    data = m.message(b"d", body) + m.message(b"c")
    reader = MessageReader(1_000_000)
    got = []
    for i in range(0, len(data), 1000):
        got += reader.feed(data[i:i + 1000])
    assert got == [(ord("d"), body), (ord("c"), b"")]
    assert reader.pending == 0
