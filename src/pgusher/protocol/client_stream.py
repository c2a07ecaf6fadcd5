"""Incremental scanner for client-to-server bytes after login.

Strategy: as for the server direction (protocol/framing.py), walk the 5-byte headers of each
chunk and skip bodies by count, checking each message's type and length against what
PostgreSQL accepts. ``ClientStream.feed_messages`` (transaction and statement mode) holds
messages whole for rewriting, but only up to ``stream_from``: a longer one comes out as its
head and raw pieces (see protocol/streamed.py).

The scanner touches no socket: it takes bytes and returns the bytes or messages to forward,
leaving counters and flags for the connection to act on after it has written.
"""

from __future__ import annotations

from ..errors import ProtocolError
from .messages import TYPE_LEN

_TYPE_LEN_FROM = TYPE_LEN.unpack_from  # (type byte as int, int32 length) in one call

# Message type bytes as ints, compared without decoding.
Q_QUERY = ord("Q")
F_FUNCTION = ord("F")
S_SYNC = ord("S")
X_TERMINATE = ord("X")
COPY_DATA = ord("d")

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
# The limits per message type for each max_packet_size in use: one dict shared by all
# clients, not one each.
_LIMITS_BY_MAX: dict[int, dict[int, int]] = {}
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


class ClientStream:
    """Scans client-to-server bytes after login.

    After :meth:`feed`: ``expect`` is how many ReadyForQuery replies the forwarded bytes will
    produce (one per Query, FunctionCall and Sync); ``unsynced`` is true while extended-protocol
    work has been sent without a closing Sync; ``uncounted`` once a Query or FunctionCall came
    inside such work (after an error there the server skips it without a reply, so ``expect``
    may count one too many); ``terminated`` is set when the client sent Terminate (which is
    never forwarded: pooled servers outlive their clients).
    """

    __slots__ = (
        "_have",
        "_limits",
        "_need",
        "_parts",
        "_pending",
        "_skip",
        "_unsynced_before",
        "expect",
        "max_size",
        "stream_from",
        "terminated",
        "uncounted",
        "unsynced",
    )

    def __init__(self, max_size: int = 2147483647, stream_from: int = 0) -> None:
        limits = _LIMITS_BY_MAX.get(max_size)
        if limits is None:
            limits = _LIMITS_BY_MAX[max_size] = {
                kind: min(limit, max_size) for kind, limit in _TYPE_LIMITS.items()}
        self._limits = limits  # read only
        self._pending = b""
        # feed_messages: chunks that came after _pending, _have bytes held in all, _need bytes
        # wanted before the held message is scanned again (joined once, not on every chunk).
        self._parts: list[bytes] = []
        self._have = 0
        self._need = 0
        self._skip = 0
        self.expect = 0
        self.unsynced = False
        self._unsynced_before = False  # unsynced as the last chunk found it
        self.uncounted = False
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

    def _broken(self, text: str) -> ProtocolError:
        """Nothing of a chunk with a bad message is passed on: what its messages before the
        bad one did to ``unsynced`` (a Sync among them) did not happen for the server."""
        self.unsynced = self._unsynced_before
        return ProtocolError(text)

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
        self._unsynced_before = self.unsynced
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
                raise self._broken(f"invalid frontend message type {kind}")
            if not 4 <= length <= limit:
                raise self._broken(f"invalid client message length {length}")
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
                if self.unsynced:
                    self.uncounted = True
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
        self._unsynced_before = self.unsynced
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
                raise self._broken(f"invalid frontend message type {kind}")
            if not 4 <= length <= limit:
                raise self._broken(f"invalid client message length {length}")
            if kind in (Q_QUERY, F_FUNCTION):
                self.expect += 1
                if self.unsynced:
                    self.uncounted = True
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
