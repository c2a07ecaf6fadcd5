"""The client scanner against random message sequences, random chunking and bad headers.

Whatever it is fed, ClientStream gives back exactly the bytes of the messages (whole ones from
feed_messages, with only CopyData in pieces), stops at Terminate, or raises ProtocolError at a
bad header: never another exception, never a loop.
"""

from __future__ import annotations

import itertools
import signal
import struct
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgusher.errors import ProtocolError
from pgusher.protocol import messages as m
from pgusher.protocol.client_stream import ClientStream

FUZZ = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])

CLIENT_KINDS = b"QPBEDCHSFdcf"
BAD_KINDS = bytes(k for k in range(256) if k not in CLIENT_KINDS + b"X")
MAX_SIZE = 200  # max_packet_size of the streams under test

bodies = st.binary(max_size=40)
messages = st.lists(st.tuples(st.sampled_from(CLIENT_KINDS), bodies), max_size=12)


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Fail instead of hanging: a scanner that stops making progress is a bug."""
    def expired(signum: int, frame: object) -> None:
        raise TimeoutError("the scanner did not finish")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def encode(msgs: list[tuple[int, bytes]]) -> list[bytes]:
    return [m.message(bytes([kind]), body) for kind, body in msgs]


@st.composite
def chunked(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` cut at random points (or byte by byte, or whole)."""
    how = draw(st.sampled_from(["whole", "bytes", "random"]))
    if how == "whole" or not data:
        return [data]
    if how == "bytes":
        return [data[i:i + 1] for i in range(len(data))]
    cuts = sorted(set(draw(st.lists(st.integers(1, len(data) - 1), max_size=12))
                      if len(data) > 1 else []))
    edges = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def ready_count(msgs: list[tuple[int, bytes]]) -> int:
    return sum(1 for kind, _ in msgs if kind in b"QFS")


@FUZZ
@given(st.data(), messages)
def test_feed_returns_exactly_the_messages(data: st.DataObject,
                                           msgs: list[tuple[int, bytes]]) -> None:
    whole = b"".join(encode(msgs))
    stream = ClientStream()
    out = b""
    expect = 0
    with time_limit(5):
        for chunk in data.draw(chunked(whole)):
            out += stream.feed(chunk)
            expect += stream.expect
    assert out == whole
    assert expect == ready_count(msgs)
    assert stream.at_boundary and not stream.mid_message and not stream.terminated


@FUZZ
@given(st.data(), messages)
def test_feed_messages_returns_whole_messages(data: st.DataObject,
                                              msgs: list[tuple[int, bytes]]) -> None:
    encoded = encode(msgs)
    whole = b"".join(encoded)
    stream = ClientStream()
    out: list[tuple[int, bytes]] = []
    expect = 0
    with time_limit(5):
        for chunk in data.draw(chunked(whole)):
            out += stream.feed_messages(chunk)
            expect += stream.expect
    assert expect == ready_count(msgs)
    assert stream.at_boundary and not stream.terminated
    # Every message comes whole, as itself, except CopyData, which may come in pieces.
    items = iter(out)
    for msg in encoded:
        kind, got = next(items)
        if kind:
            assert (kind, got) == (msg[0], msg)
            continue
        assert msg[0] == ord("d")
        while len(got) < len(msg):
            kind, piece = next(items)
            assert kind == 0
            got += piece
        assert got == msg
    assert next(items, None) is None


@FUZZ
@given(st.data(), messages, messages, st.booleans())
def test_nothing_after_terminate(data: st.DataObject, before: list[tuple[int, bytes]],
                                 after: list[tuple[int, bytes]], rewriting: bool) -> None:
    head = b"".join(encode(before))
    whole = head + m.TERMINATE + b"".join(encode(after)) + b"\xff garbage"
    stream = ClientStream()
    out = b""
    with time_limit(5):
        for chunk in data.draw(chunked(whole)):
            if rewriting:
                out += b"".join(msg for _, msg in stream.feed_messages(chunk))
            else:
                out += stream.feed(chunk)
    assert out == head and stream.terminated


@st.composite
def bad_header(draw: st.DrawFn) -> bytes:
    """A header no client may send: an unknown type, or a length out of bounds."""
    if draw(st.booleans()):
        kind = draw(st.sampled_from(BAD_KINDS))
        return bytes([kind]) + struct.pack("!i", draw(st.integers(4, MAX_SIZE)))
    kind = draw(st.sampled_from(CLIENT_KINDS))
    length = draw(st.one_of(st.integers(-2**31, 3), st.integers(MAX_SIZE + 1, 2**31 - 1)))
    return bytes([kind]) + struct.pack("!i", length)


@FUZZ
@given(st.data(), messages, bad_header(), bodies, st.booleans())
def test_bad_header_is_a_protocol_error(data: st.DataObject, before: list[tuple[int, bytes]],
                                        bad: bytes, rest: bytes, rewriting: bool) -> None:
    head = b"".join(encode(before))
    stream = ClientStream(max_size=MAX_SIZE)
    out = b""
    with time_limit(5), pytest.raises(ProtocolError):
        for chunk in data.draw(chunked(head + bad + rest)):
            if rewriting:
                out += b"".join(msg for _, msg in stream.feed_messages(chunk))
            else:
                out += stream.feed(chunk)
    # Nothing of the bad message or after it was let through.
    assert head.startswith(out)


@FUZZ
@given(st.binary(max_size=300), st.data(), st.booleans())
def test_any_bytes_give_messages_or_a_protocol_error(raw: bytes, data: st.DataObject,
                                                     rewriting: bool) -> None:
    stream = ClientStream(max_size=MAX_SIZE)
    out = b""
    with time_limit(5):
        try:
            for chunk in data.draw(chunked(raw)):
                if rewriting:
                    out += b"".join(msg for _, msg in stream.feed_messages(chunk))
                else:
                    out += stream.feed(chunk)
        except ProtocolError:
            pass
    assert raw.startswith(out)
