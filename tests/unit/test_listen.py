"""LISTEN in transaction mode without sockets: what the SQL says, the listening session's
replies, and a server stream that drops its own notifications."""

from __future__ import annotations

import struct

import pytest

from pgusher.protocol import messages as m
from pgusher.protocol.framing import ServerStream
from pgusher.protocol.listen import Done, Ended, ListenSession, Notification, quote_ident
from pgusher.protocol.session import LISTEN, UNLISTEN, inspect


def notification(pid: int, channel: str, payload: str) -> bytes:
    return m.message(b"A", struct.pack("!i", pid) + channel.encode() + b"\0"
                     + payload.encode() + b"\0")


@pytest.mark.parametrize(("sql", "effects"), [
    ("LISTEN jobs", [(LISTEN, "jobs", "")]),
    ("listen Jobs;", [(LISTEN, "jobs", "")]),
    ('LISTEN "Mixed ""Q"" Case"', [(LISTEN, 'Mixed "Q" Case', "")]),
    ("UNLISTEN jobs", [(UNLISTEN, "jobs", "")]),
    ("unlisten *", [(UNLISTEN, "*", "")]),
    ("begin; listen a; listen b; commit", [(LISTEN, "a", ""), (LISTEN, "b", "")]),
    ("LISTEN *", []),  # not SQL: the server refuses it
    ("select 'listen x'", []),
    ("LISTEN " + "c" * 70, [(LISTEN, "c" * 63, "")]),  # cut as PostgreSQL cuts a name
])
def test_listen_statements(sql: str, effects: list[tuple[str, str, str]]) -> None:
    assert [e for e in inspect(sql.encode()) if e[0] in (LISTEN, UNLISTEN)] == effects


def test_session_matches_replies_to_commands_at_any_cut() -> None:
    replies = (m.command_complete("LISTEN") + m.ready_for_query(b"I")
               + notification(7, "a b", "x") + m.error_response("ERROR", "42601", "no")
               + m.ready_for_query(b"I"))
    for cut in range(len(replies) + 1):
        session = ListenSession(1 << 20)
        assert session.command("LISTEN", "a b") == m.query('LISTEN "a b"')
        session.command("UNLISTEN", 'q"')
        events = session.feed(replies[:cut]) + session.feed(replies[cut:])
        assert events[0] == Done("LISTEN", "a b", None)
        assert events[1] == Notification("a b", notification(7, "a b", "x"))
        assert isinstance(events[2], Done) and events[2].channel == 'q"'
        assert events[2].error is not None and events[2].error["C"] == "42601"
        assert not session.sent


def test_session_ends_on_fatal_or_garbage() -> None:
    session = ListenSession(1 << 20)
    fatal = m.error_response("FATAL", "57P01", "terminating connection")
    assert session.feed(fatal) == [Ended("server ended the session: terminating connection")]
    session = ListenSession(1 << 20)
    [ended] = session.feed(m.ready_for_query(b"I"))
    assert isinstance(ended, Ended)  # a reply to nothing
    session = ListenSession(1 << 20)
    [ended] = session.feed(m.message(b"A", b"\0\0\0\1no-terminator"))
    assert isinstance(ended, Ended)


def test_quote_ident() -> None:
    assert quote_ident('a"b') == '"a""b"'


def test_a_muted_stream_drops_notifications_only() -> None:
    body = (m.command_complete("SELECT 1") + notification(1, "c", "p" * 50)
            + m.notice_response("note") + notification(2, "c", "")
            + m.ready_for_query(b"I"))
    kept = m.command_complete("SELECT 1") + m.notice_response("note") + m.ready_for_query(b"I")
    for cut in range(len(body) + 1):
        stream = ServerStream(lambda *a: None)
        stream.mute = True
        out = stream.feed(body[:cut])
        ready = stream.ready
        out += stream.feed(body[cut:])
        assert out == kept
        assert ready + stream.ready == 1
    stream = ServerStream(lambda *a: None)
    assert stream.feed(body) == body  # not muted: everything goes to the client
