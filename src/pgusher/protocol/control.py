"""Simple queries of the pooler's own on a connection of its own, after its login (sans-IO).

Strategy: one Query at a time; its replies are read whole with the bounded reader, and when
its ReadyForQuery comes the session reports one :class:`Result`: the text rows of every
statement of the query (one list for all), the first error, and the transaction status.
Used by the fleet's coordination connection (net/fleet.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ProtocolError
from . import messages as m
from .reader import MessageReader


@dataclass
class Result:
    rows: list[list[str | None]] = field(default_factory=list)
    error: dict[str, str] | None = None
    status: str = "I"


@dataclass(frozen=True)
class Ended:
    """The server ended the session, or sent what cannot be read."""

    reason: str


def data_row(body: bytes) -> list[str | None]:
    """The values of a DataRow body, as text (None for NULL)."""
    return [None if v is None else v.decode("utf-8", "replace") for v in m.parse_data_row(body)]


class ControlSession:
    __slots__ = ("_reader", "_result", "busy")

    def __init__(self, max_size: int) -> None:
        self._reader = MessageReader(max_size)
        self._result = Result()
        self.busy = False

    def query(self, sql: str) -> bytes:
        if self.busy:
            raise ProtocolError("a query of the pooler's own is already running")
        self.busy = True
        self._result = Result()
        return m.query(sql)

    def feed(self, data: bytes) -> list[Result | Ended]:
        events: list[Result | Ended] = []
        try:
            messages = self._reader.feed(data)
            for kind, body in messages:
                if kind == 68:  # 'D'
                    self._result.rows.append(data_row(body))
                elif kind == 69:  # 'E'
                    fields = m.parse_error_fields(body)
                    if fields.get("V", fields.get("S")) in ("FATAL", "PANIC"):
                        return [*events, Ended(f"server ended the session: "
                                                f"{fields.get('M', '')}")]
                    if self._result.error is None:
                        self._result.error = fields
                elif kind == 90:  # 'Z'
                    if not self.busy:
                        return [*events, Ended("unexpected ReadyForQuery from server")]
                    self.busy = False
                    self._result.status = body[:1].decode("ascii", "replace")
                    events.append(self._result)
                    self._result = Result()
        except ProtocolError as exc:
            return [*events, Ended(f"bad packet from server: {exc.message}")]
        return events
