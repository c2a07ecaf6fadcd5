"""One bounded message reader for every splitter that reads messages whole.

Strategy: received chunks are appended to one ``bytearray`` (each chunk is copied once; the
bytes already pending are never copied again), and whole messages are cut from its front
(CPython deletes a bytearray's head without moving the rest). Two framings: typed messages
(a type byte, then an int32 length that counts itself but not the type byte) and, for the
startup phase, untyped packets (an int32 length that counts itself, then the body).

A declared length is checked as soon as its header is in, before any body is waited for, so
a peer cannot make the reader hold more than ``max_size`` bytes for one message, and a length
too small to count itself (negative, zero, 3...) is an error rather than a step that never
advances. Both raise :class:`~pgusher.errors.ProtocolError`; the pending bytes stay as they
were, so a caller that speaks of its own limit in its own words catches it around the call.

Callers whose state changes with a message (the startup packet must stand alone before TLS,
the login ends at ReadyForQuery and what follows belongs to another phase) take messages one
at a time with :meth:`MessageReader.next` and the rest with :meth:`MessageReader.take_rest`;
the others take all whole messages of a chunk with :meth:`MessageReader.feed`. The data-path
scanners (framing.py, client_stream.py) walk headers without holding bodies and do not use it.

The reader touches no socket: it takes bytes and returns messages.
"""

from __future__ import annotations

from ..errors import ProtocolError
from .messages import INT32

__all__ = ["STARTUP_MIN", "TYPED_MIN", "Message", "MessageReader"]

_INT32_FROM = INT32.unpack_from

# The smallest lengths there are: a typed message's length counts its own 4 bytes; a startup
# packet's counts itself and the 4-byte protocol or request code.
TYPED_MIN = 4
STARTUP_MIN = 8

# (type byte as an int, body without the header); the type is 0 for an untyped packet.
Message = tuple[int, bytes]


class MessageReader:
    """Splits received bytes into messages of at most ``max_size`` (the declared length).

    ``typed``: type byte + int32 length (the regular protocol); otherwise int32 length + body
    (the startup packet, SSLRequest, GSSENCRequest, CancelRequest).
    """

    __slots__ = ("_buf", "_header", "_minimum", "max_size", "typed")

    def __init__(self, max_size: int, typed: bool = True) -> None:
        self.max_size = max_size
        self.typed = typed
        self._header = 5 if typed else 4
        self._minimum = TYPED_MIN if typed else STARTUP_MIN
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """The number of bytes received and not yet taken."""
        return len(self._buf)

    def push(self, data: bytes) -> None:
        """Add received bytes without reading them (see :meth:`next`)."""
        self._buf += data

    def header(self) -> tuple[int, int] | None:
        """The next message's type byte (0 if untyped) and declared length, unchecked, once
        its header is in: for a caller that judges the type before the length."""
        buf = self._buf
        if len(buf) < self._header:
            return None
        if self.typed:
            return buf[0], _INT32_FROM(buf, 1)[0]
        return 0, _INT32_FROM(buf, 0)[0]

    def next(self) -> Message | None:
        """The next whole message, taken from the pending bytes, or None while it is not in.

        Raises ProtocolError for a declared length below the minimum or above ``max_size``."""
        buf = self._buf
        if len(buf) < self._header:
            return None
        if self.typed:
            kind = buf[0]
            length = _INT32_FROM(buf, 1)[0]
            end = length + 1
        else:
            kind = 0
            length = _INT32_FROM(buf, 0)[0]
            end = length
        if length < self._minimum or length > self.max_size:
            raise ProtocolError(self._bad_length(kind, length))
        if len(buf) < end:
            return None
        body = bytes(buf[self._header:end])
        del buf[:end]
        return kind, body

    def feed(self, data: bytes) -> list[Message]:
        """Add received bytes and take every whole message now in; the unfinished tail stays.

        On a bad length the messages before it are lost with the error: a caller that must
        act on them uses :meth:`push` and :meth:`next`."""
        self._buf += data
        out: list[Message] = []
        while (message := self.next()) is not None:
            out.append(message)
        return out

    def take_rest(self) -> bytes:
        """Take every pending byte (the next phase's, or for another reader)."""
        rest = bytes(self._buf)
        self._buf.clear()
        return rest

    def _bad_length(self, kind: int, length: int) -> str:
        if self.typed:
            what = f"message type {chr(kind)!r}"
            least = f"at least {TYPED_MIN}, as the length counts itself"
        else:
            what = "startup packet"
            least = f"at least {STARTUP_MIN}: the length and a code"
        if length < self._minimum:
            return f"invalid length {length} of {what} ({least})"
        return f"{what} of length {length} exceeds the limit of {self.max_size} bytes"
