"""Messages too long to hold whole in transaction and statement mode (sans-IO).

A client message longer than the client stream's ``stream_from`` (16 x pkt_buf) is never
held until whole: :meth:`ClientStream.feed_messages` hands over its head (the header and, for
Parse and Bind, the names) as ``(BIG | type, head)`` and the rest as raw pieces, which go to
the server as they come, like CopyData. The head decides for the whole message:

* Query: its text is not read. What it does to the session is read back after its
  transaction (an OPAQUE effect), and the server is reset before it is reused, as the text
  may also have dropped prepared statements (DISCARD ALL, DEALLOCATE ALL).
* Parse of the unnamed statement: opaque likewise; it goes as it came.
* Parse of a named statement: held whole up to NAMED_PARSE_LIMIT (1 MiB; the pooler keeps
  the text of a client's statements anyway, to send it again to every server that lacks it).
  A longer one (with max_prepared_statements) is refused with 54000: keeping it is what the
  pooler cannot do with bounded memory. The refusal is the Translator's failing Parse,
  answered by the server first, so the transaction fails as PostgreSQL's own error would
  fail it; the client's Parse follows as it came and the server discards it, as it discards
  everything up to Sync after an error.
* Bind: only its names are rewritten, as for any Bind; its parameters stream. A name the
  client never prepared is failed the same way (26000), the Bind following under a name that
  no server has, to be discarded.
* Describe, Close, Execute, Sync, Flush of that size are malformed: they go as they came,
  with the tag of their kind, and the server answers them as it answers its own clients.

The Translator hands each such head to :func:`feed_big`, which works with the Translator's
base, the Rewriter (rewriter.py): this module does not import the Translator.
"""

from __future__ import annotations

from .messages import HEADER
from .prepared import (
    BIND_TAG,
    CLOSE_TAG,
    DESCRIBE_TAG,
    EXECUTE_TAG,
    FAILING_NAME,
    SYNC_TAG,
    T_PARSE,
    T_QUERY,
    Tag,
)
from .rewriter import Rewriter
from .session import OPAQUE

_HEADER = HEADER.pack  # type byte and length of a message
_TAGS = {68: DESCRIBE_TAG, 67: CLOSE_TAG, 69: EXECUTE_TAG, 83: SYNC_TAG}
_NOWHERE = FAILING_NAME + b"\0"  # a statement name no server ever has

TOO_LONG_TO_READ = "a text too long to read"


def feed_big(tr: Rewriter, kind: int, head: bytes) -> None:
    """The head of a long client message of type ``kind``; its rest follows as raw pieces."""
    link = tr.link
    out = tr.out
    if link.skipping and kind != 83:
        out.append(head)  # the server discards it until Sync
        if kind in (81, 70):
            link.lost_queries += 1
        return
    if kind == 81 or kind == 70:
        if kind == 81:
            tr.effects.append((OPAQUE, TOO_LONG_TO_READ, ""))
            link.needs_reset = True
        tr._push(Tag(T_QUERY))
        out.append(head)
    elif kind == 80:
        _parse(tr, head)
    elif kind == 66:
        _bind(tr, head)
    else:
        tag = _TAGS.get(kind)
        if tag is not None:
            tr._push(tag)
        if kind == 83:
            link.skipping = False
        out.append(head)


def _parse(tr: Rewriter, head: bytes) -> None:
    link = tr.link
    name_end = head.find(0, 5)
    if name_end > 5 and link.limit:
        shown = head[5:name_end].decode("utf-8", "replace")
        tr._fail("54000", f'prepared statement "{shown}" is too long for the pooler to '
                          "share between server connections: send it as the unnamed statement")
        tr.out.append(head)  # discarded by the server after the failing Parse, with its rest
        return
    if name_end == 5:  # the unnamed statement: it runs in this batch
        tr.effects.append((OPAQUE, TOO_LONG_TO_READ, ""))
        link.needs_reset = True
    tr._push(Tag(T_PARSE))
    tr.out.append(head)


def _bind(tr: Rewriter, head: bytes) -> None:
    portal_end = head.find(0, 5)
    name_end = head.find(0, portal_end + 1) if portal_end >= 0 else -1
    if name_end < 0:
        tr._push(BIND_TAG)  # no names in its head: malformed, the server answers it
        tr.out.append(head)
        return
    # A name never prepared: the Bind follows the failing Parse under a name no server has,
    # and the server discards it.
    tr._bind_named(head, portal_end, name_end, _NOWHERE)
