"""The pooler's listening session on a server, after its login (sans-IO).

Strategy: in transaction mode a client's server changes from one transaction to the next, so
no server can hold the client's LISTEN for it. One connection per pool does instead: it
LISTENs on the union of its clients' channels and hands every notification on, as the exact
NotificationResponse the server sent (the sender's real pid, the channel, the payload), to
the clients that listen on that channel (net/listener.py).

Commands are plain simple queries, one per channel, pipelined: each ends with one
ReadyForQuery, so the replies are matched to the commands in order. Channel names are quoted
(as identifiers, whatever they hold), so a name is always data.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from ..errors import ProtocolError
from . import messages as m
from .reader import MessageReader

LISTEN_VERB = "LISTEN"
UNLISTEN_VERB = "UNLISTEN"


@dataclass(frozen=True)
class Notification:
    channel: str
    message: bytes  # the whole NotificationResponse, to forward as it came


@dataclass(frozen=True)
class Done:
    """A command finished: ``error`` holds the server's fields when it failed."""

    verb: str
    channel: str
    error: dict[str, str] | None = None


@dataclass(frozen=True)
class Ended:
    """The server ended the session (a FATAL), or sent what cannot be read."""

    reason: str


Event = Notification | Done | Ended


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def notification_channel(body: bytes) -> str:
    """The channel of a NotificationResponse body: int32 pid, channel, payload."""
    end = body.find(0, 4)
    if len(body) < 6 or end < 0 or body.find(0, end + 1) != len(body) - 1:
        raise ProtocolError("invalid NotificationResponse")
    return body[4:end].decode("utf-8", "replace")


class ListenSession:
    """Commands out, notifications and completions in, for one logged-in connection."""

    __slots__ = ("_error", "_reader", "sent")

    def __init__(self, max_size: int) -> None:
        self._reader = MessageReader(max_size)
        self.sent: deque[tuple[str, str]] = deque()  # commands whose ReadyForQuery is due
        self._error: dict[str, str] | None = None

    def command(self, verb: str, channel: str) -> bytes:
        """The bytes of ``LISTEN channel`` or ``UNLISTEN channel``."""
        self.sent.append((verb, channel))
        return m.query(f"{verb} {quote_ident(channel)}")

    def feed(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        try:
            messages = self._reader.feed(data)
        except ProtocolError as exc:
            return [Ended(f"bad packet from server: {exc.message}")]
        for kind, body in messages:
            if kind == 65:  # 'A'
                try:
                    channel = notification_channel(body)
                except ProtocolError as exc:
                    return [*events, Ended(f"bad packet from server: {exc.message}")]
                events.append(Notification(channel, m.message(b"A", body)))
            elif kind == 69:  # 'E'
                fields = m.parse_error_fields(body)
                if fields.get("V", fields.get("S")) in ("FATAL", "PANIC"):
                    return [*events, Ended(f"server ended the session: {fields.get('M', '')}")]
                self._error = fields
            elif kind == 90:  # 'Z'
                if not self.sent:
                    return [*events, Ended("unexpected ReadyForQuery from server")]
                verb, channel = self.sent.popleft()
                events.append(Done(verb, channel, self._error))
                self._error = None
        return events
