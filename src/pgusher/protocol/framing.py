"""Incremental scanner for server-to-client bytes of a linked pair.

Strategy: walk the 5-byte headers (type byte + int32 length) of each chunk with a precompiled
``struct`` and skip bodies by count, so a chunk is forwarded as the same ``bytes`` object in the
common case. Only three things are held back across chunks: a header split over two chunks, a
message whose body the pooler must read (ready-for-query, ParameterStatus, and errors: a FATAL
ends the session, and errors inside a swallowed reply are kept) until it is whole, and nothing
else. Large DataRow or CopyData bodies stream through by skip count and are never held. The
client-to-server direction has its own scanner, ClientStream (protocol/client_stream.py).

The scanner touches no socket: it takes bytes and returns the bytes to forward, leaving
counters and flags for the connection to act on after it has written.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from ..errors import ProtocolError
from .link import LinkState
from .messages import TYPE_LEN, parse_error_fields, parse_parameter_status
from .prepared import Tag, schema_changed
from .replies import ReplyTracker

_TYPE_LEN_FROM = TYPE_LEN.unpack_from  # (type byte as int, int32 length) in one call

# Message type bytes as ints, compared without decoding.
Z_READY = ord("Z")
A_NOTIFY = ord("A")
S_PARAM = ord("S")
E_ERROR = ord("E")
D_ROW = ord("D")
C_COMPLETE = ord("C")
I_IDLE = ord("I")

# Command tags of statements that change the catalog: a Parse after one must not share a
# server-side statement analysed before it (see prepared.schema_changed).
_DDL_TAGS = (b"CREATE ", b"ALTER ", b"DROP ")
_DDL_FIRST = b"ACD"

# Severities after which PostgreSQL ends the session.
_FATAL = frozenset(("FATAL", "PANIC"))


def _session_ending(fields: dict[str, str]) -> bool:
    # 'V' (PostgreSQL 9.6 and later) is never translated; 'S' is, and is the fallback.
    return fields.get("V", fields.get("S")) in _FATAL


# Stands for the reply tags of a stream that tracks none; never filled.
_NO_TAGS: deque[Tag] = deque()


class ServerStream:
    """Scans server-to-client bytes.

    After :meth:`feed`, ``ready`` counts the ReadyForQuery messages that belong to the client
    and ``status`` holds the last status byte seen. While ``swallow`` is positive, everything up to
    and including that many ReadyForQuery messages is dropped instead of forwarded (replies to
    the pooler's own queries); ``swallowed`` counts those completed in the last feed. ``fatal``
    holds the fields of a FATAL or PANIC error once one is seen: the server's session is over.
    While ``mute`` is set, NotificationResponse messages are dropped: the server ran a client's
    LISTEN, whose notifications reach the client through the pooler's listening connection.
    """

    __slots__ = ("_after_skip", "_ddl", "_drop", "_held_have", "_held_need", "_held_parts",
                 "collect", "fatal", "held", "last_error", "link", "max_size", "mute",
                 "on_param", "ready", "skip", "status", "swallow", "swallowed", "tracker")

    def __init__(self, on_param: Callable[[str, str, bool], None],
                 max_size: int = 2147483647) -> None:
        self.held = b""
        # Chunks that came after ``held``, _held_have bytes in all, _held_need wanted before the
        # held message is looked at again: joined once, not re-copied on every chunk.
        self._held_parts: list[bytes] = []
        self._held_have = 0
        self._held_need = 0
        self.skip = 0
        self._drop = False
        self.swallow = 0
        self.swallowed = 0
        self.ready = 0
        self.status = ord("I")
        self.last_error: dict[str, str] | None = None
        self.fatal: dict[str, str] | None = None
        self.on_param = on_param
        self.max_size = max_size
        self._after_skip = b""
        # While a list: the DataRow bodies of swallowed replies (the pooler's own reads).
        self.collect: list[bytes] | None = None
        self._ddl = False  # a schema change in the transaction still open
        self.mute = False
        # Prepared-statement tracking for this server (transaction and statement mode).
        self.link: LinkState | None = None
        self.tracker: ReplyTracker | None = None

    def track(self, link: LinkState) -> None:
        self.link = link
        self.tracker = ReplyTracker(link)

    @property
    def at_boundary(self) -> bool:
        return not self.held and not self.skip

    @property
    def mid_forward(self) -> bool:
        """The client has the start of a message whose rest has not come from the server."""
        return bool(self.skip) and not self._drop

    def feed(self, data: bytes) -> bytes:
        """Consume a chunk and return what should be forwarded to the client."""
        link = self.link
        if (self.held or self.skip or self.swallow or self.mute
                or (link is not None and link.tags)):
            return self._feed_general(data)
        # Fast path, the usual case: nothing carried over and nothing to drop, so the loop
        # only walks headers, counts ReadyForQuery and reports ParameterStatus.
        n = len(data)
        last = n - 5  # the last position a whole header can start at
        pos = 0
        ready = 0
        unpack = _TYPE_LEN_FROM
        max_size = self.max_size
        while pos <= last:
            kind, length = unpack(data, pos)
            if not 4 <= length <= max_size:
                raise ProtocolError(f"invalid server message length {length}")
            end = pos + 1 + length
            if end > n:
                if kind in (Z_READY, S_PARAM, E_ERROR, C_COMPLETE):
                    break  # held until whole
                self.skip = end - n
                pos = n
                break
            if kind == Z_READY:
                status = self.status = data[pos + 5]
                ready += 1
                if self._ddl and status == I_IDLE:
                    self._committed()
            elif kind == S_PARAM:
                name, value = parse_parameter_status(data[pos + 5:end])
                self.on_param(name, value, False)
            elif kind == E_ERROR:
                fields = parse_error_fields(data[pos + 5:end])
                if _session_ending(fields):
                    self.fatal = fields
            elif kind == C_COMPLETE and length > 9 and data[pos + 5] in _DDL_FIRST:
                self._command(data, pos + 5)
            pos = end
        self.ready = ready
        self.swallowed = 0
        if ready and link is not None:
            link.status = self.status
            if link.untagged_z:
                left = link.untagged_z - ready
                link.untagged_z = left if left > 0 else 0
        if pos == n:
            return data
        self._hold(data[pos:])
        return data[:pos]

    def _command(self, data: bytes, at: int) -> None:
        """A CommandComplete whose tag starts at ``at``: note a schema change."""
        if data.startswith(_DDL_TAGS, at):
            schema_changed()
            self._ddl = True

    def _committed(self) -> None:
        """The transaction of a schema change ended: what others parse now sees it."""
        self._ddl = False
        schema_changed()

    def _hold(self, held: bytes) -> None:
        """Keep the start of a message that must be read whole (or of a header)."""
        self.held = held
        have = len(held)
        self._held_have = have
        self._held_need = 1 + _TYPE_LEN_FROM(held, 0)[1] if have >= 5 else have + 1

    def _feed_general(self, data: bytes) -> bytes:
        """Every case: carried-over bytes, swallowed replies, tagged replies."""
        self.ready = 0
        self.swallowed = 0
        if self.held:
            have = self._held_have + len(data)
            if have < self._held_need:
                self._held_parts.append(data)
                self._held_have = have
                return b""
            if self._held_parts:
                self._held_parts.append(data)
                data = b"".join((self.held, *self._held_parts))
                self._held_parts.clear()
            else:
                data = self.held + data
            self.held = b""
        n = len(data)
        pos = 0
        out_from = 0
        pieces: list[bytes] = []
        if self.skip:
            if self.skip > n:
                self.skip -= n
                return b"" if self._drop else data
            pos = self.skip
            self.skip = 0
            if self._drop:
                out_from = pos
            if self._after_skip:
                # What the tracker added behind the message just ended (a reply the pooler
                # answered itself), even when that message ends with the chunk.
                pieces.append(data[out_from:pos])
                pieces.append(self._after_skip)
                out_from = pos
                self._after_skip = b""
        link = self.link
        tracker = self.tracker
        tags = link.tags if link is not None else _NO_TAGS
        max_size = self.max_size
        unpack = _TYPE_LEN_FROM
        while n - pos >= 5:
            kind, length = unpack(data, pos)
            if length < 4 or length > max_size:
                raise ProtocolError(f"invalid server message length {length}")
            end = pos + 1 + length
            if kind == A_NOTIFY and self.mute:
                if end > n:
                    break  # held until whole, then dropped
                pieces.append(data[out_from:pos])
                out_from = pos = end
                continue
            dropping = self.swallow > 0
            tagged = not dropping and bool(tags)
            if (kind in (Z_READY, S_PARAM, E_ERROR, C_COMPLETE)
                    or (kind == D_ROW and dropping and self.collect is not None)
                    or (tagged and kind in tags[0].read)):
                if end > n:
                    break  # hold the whole message until its body is here
                if kind == Z_READY:
                    status = self.status = data[pos + 5]
                    if link is not None:
                        link.status = status  # what a tagged error just after it meets
                    if dropping:
                        self.swallow -= 1
                        self.swallowed += 1
                    else:
                        self.ready += 1
                        if not tagged and link is not None and link.untagged_z:
                            link.untagged_z -= 1
                        if self._ddl and status == I_IDLE:
                            self._committed()
                elif kind == S_PARAM:
                    name, value = parse_parameter_status(data[pos + 5:end])
                    self.on_param(name, value, dropping)
                elif kind == C_COMPLETE:
                    if not dropping and length > 9 and data[pos + 5] in _DDL_FIRST:
                        self._command(data, pos + 5)
                elif kind == D_ROW and dropping and self.collect is not None:
                    self.collect.append(data[pos + 5:end])
                elif kind == E_ERROR:
                    fields = parse_error_fields(data[pos + 5:end])
                    if dropping:
                        self.last_error = fields
                    if _session_ending(fields):
                        self.fatal = fields
            elif end > n:
                # A body we do not read, cut by the chunk: stream what is here, skip the rest,
                # or drop both (a reply to the pooler's own query).
                self.skip = end - n
                drop = dropping
                if tagged and tracker is not None and kind in tags[0].watch:
                    forward, self._after_skip = tracker.reply(kind, None)
                    drop = not forward
                self._drop = drop
                if drop:
                    if pos > out_from:
                        pieces.append(data[out_from:pos])
                    out_from = n
                pos = n
                break
            if dropping:
                if pos > out_from:
                    pieces.append(data[out_from:pos])
                out_from = end
            elif tagged and tracker is not None and (kind == E_ERROR or kind in tags[0].watch):
                body = data[pos + 5:end] if kind == E_ERROR or kind in tags[0].read else None
                forward, extra = tracker.reply(kind, body)
                if not forward and kind == Z_READY:
                    self.ready -= 1  # the pooler's own query: not the client's to count
                if not forward:
                    pieces.append(data[out_from:pos])
                    if extra:
                        pieces.append(extra)
                    out_from = end
                elif extra:
                    pieces.append(data[out_from:end])
                    pieces.append(extra)
                    out_from = end
            pos = end
        if pos < n:
            self._hold(data[pos:])
        if link is not None:
            link.status = self.status
        if not pieces:
            if out_from == 0 and pos == n:
                return data
            return data[out_from:pos]
        if pos > out_from:
            pieces.append(data[out_from:pos])
        return b"".join(pieces)
