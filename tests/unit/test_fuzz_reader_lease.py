"""Hypothesis: the message reader under any cut and any bytes, and the lease's reply count
against a model of what a server answers.

Bounded example counts here; scripts/fuzz.py runs the long protocol fuzz against a live pooler.
"""

from __future__ import annotations

import itertools
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from pgusher.errors import ProtocolError
from pgusher.protocol.lease import Lease
from pgusher.protocol.link import LinkState
from pgusher.protocol.reader import MessageReader

LIMIT = 200

messages = st.lists(st.tuples(st.sampled_from(b"QPBESXpdc"), st.binary(max_size=40)),
                    max_size=8)


def encode(msgs: list[tuple[int, bytes]]) -> bytes:
    return b"".join(bytes([k]) + struct.pack("!i", len(b) + 4) + b for k, b in msgs)


def cut(data: bytes, points: list[int]) -> list[bytes]:
    edges = sorted({p % (len(data) + 1) for p in points} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@settings(max_examples=300, deadline=None, database=None)
@given(msgs=messages, points=st.lists(st.integers(0, 10_000), max_size=12))
def test_any_cut_gives_the_same_messages(msgs: list[tuple[int, bytes]],
                                         points: list[int]) -> None:
    data = encode(msgs)
    reader = MessageReader(LIMIT)
    got: list[tuple[int, bytes]] = []
    for piece in cut(data, points):
        got.extend(reader.feed(piece))
    assert [(k, bytes(b)) for k, b in got] == msgs
    assert reader.pending == 0


@settings(max_examples=300, deadline=None, database=None)
@given(data=st.binary(max_size=300), points=st.lists(st.integers(0, 1000), max_size=8),
       typed=st.booleans())
def test_any_bytes_give_messages_or_a_protocol_error(data: bytes, points: list[int],
                                                     typed: bool) -> None:
    """Never another exception, never a loop, and never more held than a message allows."""
    reader = MessageReader(LIMIT, typed=typed)
    try:
        for piece in cut(data, points):
            reader.feed(piece)
            assert reader.pending <= LIMIT + 5 + len(piece)
    except ProtocolError:
        pass


# One unit of client work: an extended batch ending in Sync with ``inner`` simple queries sent
# inside it, before its Sync. Each query and the Sync are owed a ReadyForQuery. When the batch
# fails before them the server skips the inner queries without a reply; the reply tracker
# counts them as lost (LinkState.lost_queries), and only the Sync's ReadyForQuery comes.
work = st.lists(st.tuples(st.integers(0, 3), st.booleans()), min_size=1, max_size=10)


@settings(max_examples=300, deadline=None, database=None)
@given(units=work, chunking=st.lists(st.integers(1, 5), min_size=1, max_size=12))
def test_replies_owed_reach_zero_exactly_when_all_are_answered(
        units: list[tuple[int, bool]], chunking: list[int]) -> None:
    lease = Lease()
    link = LinkState(10)
    owed = sum(inner + 1 for inner, _ in units)
    lease.expect(owed)
    # The server's side, in order: ("lost", n) when a batch's error makes it skip n queries
    # (the tracker counts them then), ("ready", status) for each ReadyForQuery.
    events: list[tuple[str, int]] = []
    for inner, failed in units:
        if failed:
            events += [("lost", inner), ("ready", 69)]
        else:
            events += [("ready", 73)] * (inner + 1)
    answered = 0
    pos = 0
    for size in itertools.cycle(chunking):
        if pos >= len(events):
            break
        chunk, pos = events[pos:pos + size], pos + size
        readies = [value for what, value in chunk if what == "ready"]
        for what, value in chunk:
            if what == "lost":
                link.lost_queries += value
                answered += value
        if readies:
            lease.ready(len(readies), readies[-1], link)
            answered += len(readies)
            assert lease.outstanding == owed - answered
    assert lease.outstanding == 0 and answered == owed
