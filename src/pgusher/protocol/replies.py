"""Server replies matched to the reply tags of what was sent (sans-IO).

The ReplyTracker reads the head of a link's tag FIFO (see link.py) against each reply that
may end it, and decides what goes to the client: forwarded, dropped (the replies to the
pooler's own Parse, Close, Describe and queries), replaced (the error of a failing Parse
stands for the one the pooler must raise) or followed by the pooler's own replies, held
until their place in the stream comes up.

* The pooler's Describe after a Parse of a shared statement (see Rewriter._follow_parse) is
  answered here. The pool's first server tells its parameter types and result row; on another
  server a different row makes the key stale. When the Parse was the pooler's, making ready a
  statement the client parsed before, what the client sent behind it fails with 0A000, as
  PostgreSQL fails a statement whose result type changed; when it was the client's own, the
  client's name moves to a statement of its own.
* After an error the server skips to the next Sync; the tags of the skipped messages are
  dropped and whatever they would have registered is undone. An error raised by a Sync itself
  (the implicit commit) or by a simple query skips nothing: that message's ReadyForQuery
  follows.
"""

from __future__ import annotations

import re

from .link import LinkState
from .messages import error_response, message
from .prepared import (
    FAILING_PARSE,
    KNOWN_LIMIT,
    PLAN_CHANGED_TEXT,
    T_BIND,
    T_DESCRIBE,
    T_EXECUTE,
    T_FAIL,
    T_INJ_CLOSE,
    T_INJ_DESCRIBE,
    T_INJ_PARSE,
    T_INJ_QUERY,
    T_PARSE,
    T_QUERY,
    T_SKIPZ,
    T_SYNC,
    T_SYNTH,
    Statement,
    Tag,
    row_shape,
    schema_changed,
    statement_key,
)

_PLAN_CHANGED_ERROR = error_response("ERROR", "0A000", PLAN_CHANGED_TEXT)
_ERROR = ord("E")
_SQLSTATE = re.compile(rb"C([0-9A-Z]{5})\0")
_PLAN_CHANGED = "0A000"
_FAILED = ord("E")
_ABORTED_ERROR = error_response(
    "ERROR", "25P02",
    "current transaction is aborted, commands ignored until end of transaction block")


class ReplyTracker:
    """Matches server replies to tags; decides what to forward, drop, replace or add."""

    __slots__ = ("link")

    def __init__(self, link: LinkState) -> None:
        self.link = link

    def reply(self, kind: int, body: bytes | None) -> tuple[bool, bytes]:
        """One reply message. Returns (forward it?, bytes to send in its place or after it).

        When forward is False and the bytes are non-empty, they replace the message; when
        forward is True, they follow it.
        """
        tags = self.link.tags
        if not tags:
            return True, b""
        head = tags[0]
        if kind == _ERROR:
            return self._error(head, body or b"")
        if kind in (78, 65, 83):  # NoticeResponse, NotificationResponse, ParameterStatus
            return True, b""
        hk = head.kind
        if hk == T_INJ_QUERY:
            if kind == 90:
                tags.popleft()
                return False, self._drain_synthetic()
            return False, b""
        if hk == T_SKIPZ:
            if kind == 90:
                head.count -= 1
                if head.count == 0:
                    tags.popleft()
                    return True, self._drain_synthetic()
            return True, b""
        if kind not in head.watch:  # its terminal replies, for the kinds left here
            return True, b""  # an intermediate reply (DataRow, ParameterDescription, ...)
        if hk == T_INJ_DESCRIBE:
            return False, self._described(head, kind, body or b"")
        tags.popleft()
        # (DEALLOCATE ALL and DISCARD ALL: the statements were set aside when it was sent.)
        if (hk in (T_PARSE, T_INJ_PARSE)) and head.key is not None:
            self.link.parse_done(head)
            known = self.link.known
            if len(known) >= KNOWN_LIMIT:
                known.clear()
            known.add(head.key)
        extra = self._drain_synthetic() if tags and tags[0].kind == T_SYNTH else b""
        return hk not in (T_INJ_PARSE, T_INJ_CLOSE), extra

    def _described(self, head: Tag, kind: int, body: bytes) -> bytes:
        """A reply to the pooler's Describe of a statement it parsed (see _follow_parse)."""
        link = self.link
        known = link.known
        key = head.key
        assert key is not None
        if kind == 116:  # ParameterDescription: the types a Parse elsewhere will pin
            if key not in known.params:
                if len(known.params) >= KNOWN_LIMIT:
                    known.params.clear()
                known.params[key] = body
            return b""
        tags = link.tags
        tags.popleft()
        head.undo = None
        shape = row_shape(body) if kind == 84 else b""
        expected = head.data if head.holds else known.shapes.get(key)
        fail = False
        if expected is None:
            if len(known.shapes) >= KNOWN_LIMIT:
                known.shapes.clear()
            known.shapes[key] = shape
        elif shape != expected:
            # The result type changed since the pool's first server parsed this statement: on
            # a direct connection, every use of a statement parsed before fails with 0A000.
            known.mark_stale(key)
            schema_changed()
            owner = head.owner
            if owner is not None:
                # The client's own Parse, just analysed: what follows may use it, and later
                # uses go to a statement of its own.
                stmt = owner.get(head.name)
                if stmt is not None and stmt.key == key:
                    owner[head.name] = Statement(statement_key(stmt.query, stmt.types),
                                                 stmt.query, stmt.types)
            else:
                fail = head.holds
        if head.holds:
            piece = link.held.popleft() if link.held else b""
            if fail:
                # What the client sent up to its Sync fails with 0A000; and the statement just
                # parsed goes, so that nothing sent after that Sync can run it either.
                tag = Tag(T_FAIL)
                tag.data = _PLAN_CHANGED_ERROR
                tags.appendleft(tag)
                tags.appendleft(Tag(T_INJ_CLOSE))
                link.statements.pop(key, None)
                piece = message(b"C", b"S" + key.encode() + b"\0") + FAILING_PARSE + piece
            link.release += piece
        return self._drain_synthetic() if tags and tags[0].kind == T_SYNTH else b""

    def _drain_synthetic(self) -> bytes:
        tags = self.link.tags
        extra = b""
        while tags and tags[0].kind == T_SYNTH:
            extra += tags.popleft().data
        return extra

    def _error(self, head: Tag, body: bytes) -> tuple[bool, bytes]:
        link = self.link
        link.errors += 1
        tags = link.tags
        hk = head.kind
        if hk in (T_QUERY, T_SKIPZ, T_INJ_QUERY):
            if head.undo is not None:
                head.undo()
                head.undo = None
            # A simple query's error does not skip anything; the pooler's own is not shown.
            return hk != T_INJ_QUERY, b""
        if hk == T_SYNC:
            # Raised by the Sync itself (a deferred constraint at the implicit commit): the
            # Sync's ReadyForQuery follows and nothing is skipped. The tag is shared: no marks.
            return True, b""
        tags.popleft()
        found = _SQLSTATE.search(body)
        code = found.group(1).decode() if found else ""
        replacement = b""
        if hk == T_FAIL or (hk == T_EXECUTE and head.data and code == "26000"):
            replacement = head.data  # (an Execute's own error, no portal say, stays)
            if hk == T_FAIL and link.status == _FAILED and b"C26000\0" not in replacement:
                # In a failed transaction PostgreSQL refuses the message before it looks
                # further; only an unknown statement name is reported first.
                replacement = _ABORTED_ERROR
        if head.key is not None and hk in (T_BIND, T_DESCRIBE, T_INJ_DESCRIBE, T_INJ_PARSE):
            if code == "26000" and head.key in link.known.stale:
                # Closed on its server when it changed. PostgreSQL, which still has it, says
                # first that a failed transaction takes nothing but its end.
                replacement = _ABORTED_ERROR if link.status == _FAILED else _PLAN_CHANGED_ERROR
            elif code == _PLAN_CHANGED:
                # "cached plan must not change result type": PostgreSQL fails this statement
                # from now on; new Parses of the text get a statement of their own.
                link.known.mark_stale(head.key)
                schema_changed()
            elif code.startswith("42") and code != "42P05":
                schema_changed()  # analysing it again failed: the catalog changed
        # The server now skips to the next Sync. What the failed message and the skipped ones
        # stood for is taken back, the latest first.
        undone = [head]
        while tags and tags[0].kind != T_SYNC:
            skipped = tags.popleft()
            undone.append(skipped)
            if skipped.kind == T_QUERY:
                link.lost_queries += 1
        for tag in reversed(undone):
            if tag.undo is not None:
                tag.undo()
                tag.undo = None
            if tag.restores is not None:
                link.unnamed = tag.restores  # a skipped query dropped nothing
            if tag.kind in (T_INJ_PARSE, T_PARSE):
                if tag.key is not None:
                    # Not parsed; unless a Parse before the last Sync did it: close first.
                    link.statements.pop(tag.key, None)
                    link.needs_close.add(tag.key)
                    link.parse_done(tag)
                owner = tag.owner
                if owner is not None:
                    stmt = owner.get(tag.name)
                    if stmt is not None and stmt.key == tag.key:
                        del owner[tag.name]
            elif tag.kind == T_INJ_CLOSE and tag.key is not None:
                link.needs_close.add(tag.key)  # not closed: the server still has it
        if not tags:
            link.skipping = True  # its Sync has not been sent yet
        if replacement:
            return False, replacement
        return True, b""
