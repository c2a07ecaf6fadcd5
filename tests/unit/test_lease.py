"""The lease without sockets: replies owed, session effects kept or dropped, the release verdict.

The streams in the verdict tests are the real scanners, fed whole, byte by byte and with
trailing bytes.
"""

from __future__ import annotations

import pytest

from pgusher.errors import ProtocolError
from pgusher.protocol import messages as m
from pgusher.protocol.client_stream import ClientStream
from pgusher.protocol.framing import ServerStream
from pgusher.protocol.lease import CUSTOM_LIMIT, Lease, apply_effects, releasable
from pgusher.protocol.link import LinkState
from pgusher.protocol.prepared import Tag
from pgusher.protocol.session import (
    DIRTY,
    DISCARD_ALL,
    OPAQUE,
    RESET,
    RESET_ALL,
    ROLLBACK,
    SET,
)

IDLE, IN_TX, FAILED = 73, 84, 69
WORK_MEM = (SET, "work_mem", "'8MB'")


def committed_after(lease: Lease, *readies: int, link: LinkState | None = None) -> list[object]:
    """What each ReadyForQuery (by status) hands back."""
    return [lease.ready(1, status, link) for status in readies]


# ---------------------------------------------------------------------- replies owed


def test_replies_are_counted_and_lost_queries_taken_in() -> None:
    lease = Lease()
    assert lease.expect(3) is True
    assert lease.expect(1) is False
    link = LinkState(0)
    link.lost_queries = 2  # skipped by the server after an error
    lease.ready(1, FAILED, link)
    assert lease.outstanding == 1 and link.lost_queries == 0
    lease.ready(5, IDLE, None)
    assert lease.outstanding == 0  # never below zero


def test_serverless_answers_count_as_replies() -> None:
    lease = Lease()
    lease.expect(2)
    lease.answered(2)
    assert lease.outstanding == 0


# ---------------------------------------------------------------------- effects


def test_effects_are_kept_after_the_transaction_commits() -> None:
    lease = Lease()
    lease.expect(3)
    lease.note([WORK_MEM], errors=0)
    assert committed_after(lease, IN_TX, IN_TX, IDLE) == [None, None, [WORK_MEM]]
    assert lease.effects == []


def test_effects_wait_for_the_last_reply_owed() -> None:
    lease = Lease()
    lease.expect(2)
    lease.note([WORK_MEM], errors=0)
    assert lease.ready(1, IDLE, None) is None  # one more ReadyForQuery to come
    assert lease.ready(1, IDLE, None) == [WORK_MEM]


def test_a_failed_transaction_drops_its_effects() -> None:
    lease = Lease()
    lease.expect(3)
    lease.note([WORK_MEM], errors=0)
    assert committed_after(lease, IN_TX, FAILED, IDLE) == [None, None, None]
    lease.expect(1)
    lease.note([WORK_MEM], errors=0)
    assert lease.ready(1, IDLE, None) == [WORK_MEM]  # the next transaction starts clean


def test_a_rollback_drops_the_effects_before_it() -> None:
    lease = Lease()
    lease.expect(1)
    lease.note([WORK_MEM, (ROLLBACK, "", "")], errors=0)
    assert lease.ready(1, IDLE, None) is None
    assert not lease.rolled_back


def test_an_error_on_a_message_the_pooler_added_fails_the_effects() -> None:
    link = LinkState(10)
    lease = Lease()
    lease.expect(1)
    lease.note([WORK_MEM], errors=link.errors)
    link.errors += 1  # an error in a tagged reply (the ReplyTracker counts them)
    assert lease.ready(1, IDLE, link) is None


def test_dirty_and_opaque_are_reported_once() -> None:
    lease = Lease()
    assert lease.note([(DIRTY, "LISTEN", "")], 0) == ("LISTEN", "")
    assert lease.note([(OPAQUE, "set_config myapp.tenant", "myapp.tenant")], 0) == (
        "", "set_config myapp.tenant")
    assert lease.opaque == 1
    assert lease.note([(OPAQUE, "set_config myapp.tenant", "")], 0) == ("", "")
    assert lease.note([(OPAQUE, "DO", "")], 0) == ("", "DO")
    assert lease.opaque == 2
    level, names = lease.take_read_back()
    assert level == 2 and names == {"myapp.tenant"} and lease.opaque == 0


def test_custom_names_are_bounded_and_never_the_identity() -> None:
    lease = Lease()
    many = ",".join(f"app.n{i}" for i in range(CUSTOM_LIMIT * 2))
    lease.note([(OPAQUE, "DO", "role,session_authorization," + many)], 0)
    assert "role" not in lease.custom_names
    assert "session_authorization" not in lease.custom_names
    lease.note([(OPAQUE, "DO", "app.late")], 0)
    assert "app.late" not in lease.custom_names
    assert len(lease.custom_names) >= CUSTOM_LIMIT


# ---------------------------------------------------------------------- RESET semantics


def test_reset_returns_to_the_clients_startup_value() -> None:
    mine: dict[str, str] = {"work_mem": "'8MB'"}
    theirs: dict[str, str] = {"work_mem": "'8MB'"}
    apply_effects([(RESET, "work_mem", "")], mine, theirs, {"work_mem": "'4MB'"}, {})
    assert mine == {"work_mem": "'4MB'"} and theirs == {}


def test_reset_all_keeps_role_and_session_authorization() -> None:
    sets = {"role": "r1", "session_authorization": "u1", "work_mem": "'8MB'"}
    mine, theirs = dict(sets), dict(sets)
    apply_effects([(RESET_ALL, "", "")], mine, theirs, {"search_path": "a"}, {})
    assert mine == {"role": "r1", "session_authorization": "u1", "search_path": "a"}
    assert theirs == {"role": "r1", "session_authorization": "u1"}


@pytest.mark.parametrize("effect", [(SET, "session_authorization", "u2"),
                                    (RESET, "session_authorization", "")])
def test_session_authorization_resets_the_role(effect: tuple[str, str, str]) -> None:
    mine = {"role": "r1"}
    theirs = {"role": "r1"}
    apply_effects([effect], mine, theirs, {}, {})
    assert "role" not in mine and "role" not in theirs


def test_discard_all_resets_everything_to_the_startup_values() -> None:
    mine = {"role": "r1", "work_mem": "'8MB'"}
    theirs = dict(mine)
    apply_effects([(DISCARD_ALL, "", "")], mine, theirs, {"search_path": "a"}, {})
    assert mine == {"search_path": "a"} and theirs == {}


def test_reported_parameters_are_left_to_parameter_status() -> None:
    mine: dict[str, str] = {}
    apply_effects([(SET, "datestyle", "ISO")], mine, {}, {}, {"datestyle": "DateStyle"})
    assert mine == {}


# ---------------------------------------------------------------------- the release verdict

READY_IDLE = m.ready_for_query(b"I")
SELECT_REPLY = (m.message(b"T", b"\0\0") + m.message(b"C", b"SELECT 0\0") + READY_IDLE)


def feeds(data: bytes) -> list[list[bytes]]:
    """``data`` whole, byte by byte, and with the start of another message behind it."""
    return [[data], [data[i:i + 1] for i in range(len(data))],
            [data + m.message(b"N", b"")[:3]]]


@pytest.mark.parametrize("pieces", feeds(SELECT_REPLY))
def test_releasable_only_between_server_messages(pieces: list[bytes]) -> None:
    server = ServerStream(lambda *a: None)
    client = ClientStream()
    client.feed(m.query("select"))
    for piece in pieces:
        server.feed(piece)
    trailing = pieces[-1].endswith(m.message(b"N", b"")[:3])
    assert releasable(client, server, None) is not trailing


def test_not_releasable_inside_a_transaction() -> None:
    server = ServerStream(lambda *a: None)
    server.feed(m.ready_for_query(b"T"))
    assert not releasable(ClientStream(), server, None)


@pytest.mark.parametrize("split", [1, 3, 7])
def test_not_releasable_with_extended_work_before_its_sync(split: int) -> None:
    server = ServerStream(lambda *a: None)
    server.feed(READY_IDLE)
    client = ClientStream()
    parse = m.message(b"P", b"\0select 1\0\0\0")
    client.feed(parse[:split])
    client.feed(parse[split:])
    assert not releasable(client, server, None)
    client.feed(m.SYNC)
    assert releasable(client, server, None)


def test_not_releasable_while_tagged_replies_are_due() -> None:
    server = ServerStream(lambda *a: None)
    server.feed(READY_IDLE)
    link = LinkState(10)
    link.tags.append(Tag(0))
    assert not releasable(ClientStream(), server, link)
    link.tags.clear()
    assert releasable(ClientStream(), server, link)


def test_not_releasable_while_a_query_of_the_poolers_own_is_due() -> None:
    server = ServerStream(lambda *a: None)
    server.feed(READY_IDLE)
    server.swallow = 1
    assert not releasable(ClientStream(), server, None)


def test_not_releasable_while_the_server_skips_to_a_sync() -> None:
    server = ServerStream(lambda *a: None)
    server.feed(READY_IDLE)
    link = LinkState(10)
    link.skipping = True  # an error came and its Sync has not been sent
    assert not releasable(ClientStream(), server, link)


def test_a_refused_message_leaves_the_stream_in_doubt() -> None:
    """Messages before the bad one in a chunk are not passed on: a Sync among them never
    reached the server, so the stream must not claim every batch was synced."""
    client = ClientStream()
    client.feed_messages(m.message(b"D", b"S\0"))
    with pytest.raises(ProtocolError):
        client.feed_messages(m.message(b"S") + m.message(b"7", b"\0"))
    assert client.unsynced
