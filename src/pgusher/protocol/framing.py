"""Incremental message scanners for the two directions of a linked pair.

Strategy: walk the 5-byte headers (type byte + int32 length) of each chunk with a precompiled
``struct`` and skip bodies by count, so a chunk is forwarded as the same ``bytes`` object in the
common case. Only three things are held back across chunks: a header split over two chunks, a
message whose body the pooler must read (ready-for-query, ParameterStatus, and errors: a FATAL
ends the session, and errors inside a swallowed reply are kept) until it is whole, and nothing
else. Large DataRow or CopyData bodies stream
through by skip count and are never held. ``ClientStream.feed_messages`` (transaction and
statement mode) holds messages whole for rewriting, but only up to ``stream_from``: a longer
one comes out as its head and raw pieces (see protocol/streamed.py).

Neither scanner touches a socket: they take bytes and return the bytes to forward, leaving
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
S_PARAM = ord("S")
E_ERROR = ord("E")
D_ROW = ord("D")
C_COMPLETE = ord("C")
I_IDLE = ord("I")

# Command tags of statements that change the catalog: a Parse after one must not share a
# server-side statement analysed before it (see prepared.schema_changed).
_DDL_TAGS = (b"CREATE ", b"ALTER ", b"DROP ")
_DDL_FIRST = b"ACD"

Q_QUERY = ord("Q")
F_FUNCTION = ord("F")
S_SYNC = ord("S")
X_TERMINATE = ord("X")
COPY_DATA = ord("d")

# Severities after which PostgreSQL ends the session.
_FATAL = frozenset(("FATAL", "PANIC"))


def _session_ending(fields: dict[str, str]) -> bool:
    # 'V' (PostgreSQL 9.6 and later) is never translated; 'S' is, and is the fallback.
    return fields.get("V", fields.get("S")) in _FATAL


# Extended-protocol messages that open work which only a Sync closes.
_EXTENDED = frozenset(b"PBEDC")
# Every type a client may send after login. PasswordMessage ('p') belongs to authentication
# only, which the login phase reads: after it, PostgreSQL ends the connection on one, so a
# server that got one would fail the next client it went to.
_CLIENT_TYPES = frozenset(b"QPBEDCHSXFdcf")
# The longest message of each type PostgreSQL accepts (postgres.c, SocketBackend): messages
# that carry queries or data up to 1 GB, the others 10,000 bytes. Longer is a protocol
# violation at once, not a wait for bytes that will never be read.
_LARGE_LIMIT = 0x3FFFFFFF
_SMALL_LIMIT = 10000
_TYPE_LIMITS = {kind: _LARGE_LIMIT if kind in b"QFBPd" else _SMALL_LIMIT
                for kind in _CLIENT_TYPES}
# Added to the type of a message that feed_messages streams rather than holds until whole.
BIG = 0x100
# How far into a long Parse or Bind its names are looked for.
_HEAD_CAP = 1024
# Named Parse messages up to this length are held whole even when longer than stream_from.
NAMED_PARSE_LIMIT = 1 << 20
_P_PARSE = ord("P")
_B_BIND = ord("B")


def _head_end(data: bytes, pos: int, end: int, cap: int, kind: int) -> int:
    """Where the part of a long message the Translator reads ends in ``data`` (its start at
    ``pos``, its end at ``end``, maybe past the chunk), or -1 while that part is incomplete.

    Parse: the statement name and its NUL. Bind: the portal and statement names. Others:
    the header. A name not ended within ``cap`` bytes is not waited for: the message then goes
    on as it came (the server reads it as it reads any; PostgreSQL's names have 63 bytes)."""
    if kind != _P_PARSE and kind != _B_BIND:
        return pos + 5
    stop = min(len(data), end, pos + 5 + cap)
    found = data.find(0, pos + 5, stop)
    if found >= 0 and kind == _B_BIND:
        found = data.find(0, found + 1, stop)
    if found >= 0:
        return found + 1
    return stop if stop == end or stop == pos + 5 + cap else -1


# Stands for the reply tags of a stream that tracks none; never filled.
_NO_TAGS: deque[Tag] = deque()


class ServerStream:
    """Scans server-to-client bytes.

    After :meth:`feed`, ``ready`` counts the ReadyForQuery messages that belong to the client
    and ``status`` holds the last status byte seen. While ``swallow`` is positive, everything up to
    and including that many ReadyForQuery messages is dropped instead of forwarded (replies to
    the pooler's own queries); ``swallowed`` counts those completed in the last feed. ``fatal``
    holds the fields of a FATAL or PANIC error once one is seen: the server's session is over.
    """

    __slots__ = ("_after_skip", "_ddl", "_drop", "_held_have", "_held_need", "_held_parts",
                 "collect", "fatal", "held", "last_error", "link", "max_size",
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
        if self.held or self.skip or self.swallow or (link is not None and link.tags):
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
            dropping = self.swallow > 0
            tagged = not dropping and bool(tags)
            if (kind in (Z_READY, S_PARAM, E_ERROR, C_COMPLETE)
                    or (kind == D_ROW and dropping and self.collect is not None)
                    or (tagged and kind in tags[0].read)):
                if end > n:
                    break  # hold the whole message until its body is here
                if kind == Z_READY:
                    status = self.status = data[pos + 5]
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


class ClientStream:
    """Scans client-to-server bytes after login.

    After :meth:`feed`: ``expect`` is how many ReadyForQuery replies the forwarded bytes will
    produce (one per Query, FunctionCall and Sync); ``unsynced`` is true while extended-protocol
    work has been sent without a closing Sync; ``terminated`` is set when the client sent
    Terminate (which is never forwarded: pooled servers outlive their clients).
    """

    __slots__ = ("_have", "_limits", "_need", "_parts", "_pending", "_skip", "expect", "max_size",
                 "stream_from", "terminated", "unsynced")

    def __init__(self, max_size: int = 2147483647, stream_from: int = 0) -> None:
        self._limits = {kind: min(limit, max_size) for kind, limit in _TYPE_LIMITS.items()}
        self._pending = b""
        # feed_messages: chunks that came after _pending, _have bytes held in all, _need bytes
        # wanted before the held message is scanned again (joined once, not on every chunk).
        self._parts: list[bytes] = []
        self._have = 0
        self._need = 0
        self._skip = 0
        self.expect = 0
        self.unsynced = False
        self.terminated = False
        self.max_size = max_size
        # feed_messages: a message longer than this (0: none) is not held until whole.
        self.stream_from = stream_from

    @property
    def at_boundary(self) -> bool:
        return not self._pending and not self._skip

    @property
    def mid_message(self) -> bool:
        """The start of a message has been let through and its rest has not: the server
        that got it reads the client's next bytes as that rest."""
        return self._skip > 0

    def feed_messages(self, data: bytes) -> list[tuple[int, bytes]]:
        """Like :meth:`feed`, but split into whole messages for rewriting.

        Every message is held until whole except CopyData and those longer than
        ``stream_from`` (a named Parse: longer than NAMED_PARSE_LIMIT), which stream: a
        CopyData cut by the chunk comes out as raw pieces of kind 0; a long message comes out
        as ``(BIG | type, head)``, the head being what the chunk holds of it (at least its
        header and, for Parse and Bind, the names the Translator reads: see
        :func:`_head_end`), and its rest as raw pieces of kind 0 in this and later feeds.
        What is held is thus bounded by ``stream_from`` (NAMED_PARSE_LIMIT) and a chunk; the
        chunks of a held message are joined once, when it is whole.
        """
        self.expect = 0
        out: list[tuple[int, bytes]] = []
        if self.terminated:
            return out
        if self._pending:
            have = self._have + len(data)
            if have < self._need:
                self._parts.append(data)
                self._have = have
                return out
            if self._parts:
                self._parts.append(data)
                data = b"".join((self._pending, *self._parts))
                self._parts.clear()
            else:
                data = self._pending + data
            self._pending = b""
        n = len(data)
        pos = 0
        need = 0  # how much of a message held at the end is wanted before it is looked at again
        if self._skip:
            if self._skip >= n:
                self._skip -= n
                out.append((0, data))
                return out
            out.append((0, data[:self._skip]))
            pos = self._skip
            self._skip = 0
        unpack = _TYPE_LEN_FROM
        limits = self._limits
        stream_from = self.stream_from
        expect = 0
        while n - pos >= 5:
            kind, length = unpack(data, pos)
            limit = limits.get(kind)
            if limit is None:
                raise ProtocolError(f"invalid frontend message type {kind}")
            if not 4 <= length <= limit:
                raise ProtocolError(f"invalid client message length {length}")
            end = pos + 1 + length
            big = length > stream_from > 0 and kind != COPY_DATA
            if big and kind == _P_PARSE and length <= NAMED_PARSE_LIMIT:
                if n - pos < 6:
                    need = 6
                    break  # named or not: its first byte says
                # A named statement's text is kept for as long as the client keeps the
                # statement (servers that lack it are sent it again): it is held whole.
                big = data[pos + 5] == 0
            if end > n and not big:
                if kind == COPY_DATA:
                    out.append((0, data[pos:]))
                    self._skip = end - n
                    self.expect = expect
                    return out
                need = end - pos
                break
            if big and _head_end(data, pos, end, _HEAD_CAP, kind) < 0:
                break  # the names are not all here yet: held (at most stream_from bytes)
            if kind in _EXTENDED:
                self.unsynced = True
            elif kind == S_SYNC:
                expect += 1
                self.unsynced = False
            elif kind in (Q_QUERY, F_FUNCTION):
                expect += 1
            elif kind == X_TERMINATE:
                self.terminated = True
                self.expect = expect
                return out
            if big:
                out.append((BIG | kind, data[pos:end]))
                if end > n:
                    self._skip = end - n
                    self.expect = expect
                    return out
            else:
                out.append((kind, data[pos:end]))
            pos = end
        if pos < n:
            self._pending = data[pos:]
            self._have = n - pos
            self._need = need if need else self._have + 1
        self.expect = expect
        return out

    def feed(self, data: bytes) -> bytes:
        self.expect = 0
        if self.terminated:
            return b""
        if self._pending:
            data = self._pending + data
            self._pending = b""
        n = len(data)
        pos = 0
        if self._skip:
            if self._skip >= n:
                self._skip -= n
                return data
            pos = self._skip
            self._skip = 0
        unpack = _TYPE_LEN_FROM
        limits = self._limits
        while n - pos >= 5:
            kind, length = unpack(data, pos)
            limit = limits.get(kind)
            if limit is None:
                raise ProtocolError(f"invalid frontend message type {kind}")
            if not 4 <= length <= limit:
                raise ProtocolError(f"invalid client message length {length}")
            if kind in (Q_QUERY, F_FUNCTION):
                self.expect += 1
            elif kind == S_SYNC:
                self.expect += 1
                self.unsynced = False
            elif kind in _EXTENDED:
                self.unsynced = True
            elif kind == X_TERMINATE:
                self.terminated = True
                return data[:pos]
            end = pos + 1 + length
            if end > n:
                self._skip = end - n
                return data
            pos = end
        if pos < n:
            self._pending = data[pos:]
            return data[:pos]
        return data
