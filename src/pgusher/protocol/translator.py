"""Client messages rewritten for one server link (sans-IO).

In transaction and statement mode a client's statements must survive being moved from one
server connection to another. The Translator registers a client's named Parse under the
client's name and sends it to the server under the statement's key (see prepared.py), so
identical statements from many clients share one server-side statement; Bind, Describe and
Close are rewritten to match. Some messages the pooler answers itself, in their place in the
reply stream: ParseComplete for a statement the server already has, CloseComplete for a
client's Close (the server-side statement is shared; only the client's name goes away).

What SQL does to the client's names (DEALLOCATE, DISCARD ALL, an SQL-level PREPARE) is done
when it is sent, or executed for the unnamed statement, and taken back if it fails or is
skipped; a message whose meaning depends on such a change before a Sync not answered yet waits
until the replies are in.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial

from ..errors import ProtocolError
from .link import LinkState
from .messages import HEADER, error_response, message, query
from .prepared import (
    BIND_TAG,
    CLOSE_COMPLETE,
    CLOSE_TAG,
    DESCRIBE_TAG,
    EXECUTE_TAG,
    INVALID_STRING,
    NO_REPLY,
    PARSE_COMPLETE,
    SYNC_TAG,
    T_EXECUTE,
    T_INJ_CLOSE,
    T_INJ_PARSE,
    T_INJ_QUERY,
    T_PARSE,
    T_QUERY,
    Effect,
    SqlStatement,
    Statement,
    Tag,
    Undo,
    schema_changed,
    split_parse,
    split_target,
    statement_key,
)
from .rewriter import FLUSH, Rewriter
from .session import OPAQUE, inspect_text, might_affect_session, split_statements, sql_prepared
from .streamed import feed_big

_HEADER = HEADER.pack  # type byte and length of a message
_DUPLICATE_NAME = b"pgusher_duplicate"
_CLOSE_DUPLICATE = message(b"C", b"S" + _DUPLICATE_NAME + b"\0")
_PROBE_NAME = b"pgusher_parse"
_CLOSE_PROBE = message(b"C", b"S" + _PROBE_NAME + b"\0")
_FAILED = ord("E")  # ReadyForQuery status of a failed transaction block
_NO_DATA = message(b"n")

# A query that may change the catalog (see prepared.schema_changed); more is harmless.
_DDL_TEXT = re.compile(rb"(?:^|;)\s*(?:create|alter|drop)\b", re.I)

# Statements whose execution drops every prepared statement of the session.
_DROPS_ALL = re.compile(rb"\b(?:discard\s+all|deallocate\s+(?:prepare\s+)?all)\b", re.I)

# SQL DEALLOCATE of a client's protocol-level statement: the server-side statement is shared,
# so the server deallocates a stand-in of the pooler's instead. It answers exactly as the
# client's DEALLOCATE would (its command tag; 25P02 in an aborted transaction). The Close
# first makes sure no earlier stand-in is left to make the PREPARE or Parse fail.
_STAND_IN = b"pgusher_deallocate"
_CLOSE_STAND_IN = message(b"C", b"S" + _STAND_IN + b"\0")
_PREPARE_STAND_IN = query("PREPARE " + _STAND_IN.decode() + " AS SELECT")
_PARSE_STAND_IN = message(b"P", _STAND_IN + b"\0SELECT\0\0\0")
_DEALLOCATE_STAND_IN = b"DEALLOCATE " + _STAND_IN
_DEALLOCATE_STAND_IN_QUERY = query(_DEALLOCATE_STAND_IN.decode())


def _well_formed_text(text: bytes) -> bool:
    """A Query body is one string: its only NUL is the last byte."""
    return text.find(0) == len(text) - 1


def drops_all_statements(query: bytes) -> bool:
    return _DROPS_ALL.search(query) is not None


def _free(statements: dict[bytes, Statement], wire: bytes) -> Undo | None:
    """A DEALLOCATE of the client's protocol-level statement ``wire`` runs: forget the name;
    return what puts it back if the DEALLOCATE fails or is skipped (None: no such name)."""
    stmt = statements.pop(wire, None)
    if stmt is None:
        return None

    def undo() -> None:
        if stmt is not None:
            statements.setdefault(wire, stmt)

    return undo


def _clear_all(statements: dict[bytes, Statement], sql: dict[str, SqlStatement] | None,
               link: LinkState, single: bool) -> Undo:
    """DISCARD ALL or DEALLOCATE ALL runs: forget the client's statements; return what puts
    them back if it fails. A failed query of several statements may or may not have run it:
    the server is then reset before reuse and the client's names stay forgotten."""
    link.doubt_all()
    saved = dict(statements)
    saved_sql = dict(sql) if sql is not None else {}
    statements.clear()
    if sql is not None:
        sql.clear()

    def undo() -> None:
        if not single:
            link.needs_reset = True
            return
        for name, stmt in saved.items():
            statements.setdefault(name, stmt)
        if sql is not None:
            for sql_name, sql_stmt in saved_sql.items():
                sql.setdefault(sql_name, sql_stmt)

    return undo


def _names_matter(kind: int, msg: bytes) -> bool:
    """Whether a message depends on (or changes) which names the client has prepared."""
    if kind == 67 or kind == 68:  # Close or Describe of a statement
        return msg[5:6] == b"S" and len(msg) > 7
    if kind == 66:  # Bind: to a named statement, or to an unnamed one that may deallocate
        return True
    if kind == 80 and msg[5:6] != b"\0":  # Parse of a named statement (or malformed)
        return True
    if kind == 81 or kind == 80:  # DEALLOCATE, DISCARD, as a query or the unnamed statement
        low = msg.lower()
        return low.find(b"deallocate") >= 0 or low.find(b"discard") >= 0
    return False


class Translator(Rewriter):
    """Rewrites one batch of whole client messages for a given server link."""

    __slots__ = ()

    def feed(self, messages: list[tuple[int, bytes]]) -> bytes:
        link = self.link
        out = self.out
        deferred = link.deferred
        for kind, msg in messages:
            if deferred:
                deferred.append((kind, msg))
                continue
            if link.name_seg >= 0 and _names_matter(kind & 255, msg) and self._unsettled():
                # What this message means depends on replies still to come: it waits.
                out.append(FLUSH)  # the server answers what it has now
                deferred.append((kind, msg))
                continue
            if kind in NO_REPLY:
                out.append(msg)  # raw CopyData pieces, CopyDone/CopyFail, Flush: no reply
                continue
            if kind > 255:  # the head of a message too long to hold: see streamed.py
                feed_big(self, kind & 255, msg)
                continue
            if link.skipping and kind != 83:
                # The server discards everything until Sync; so would PostgreSQL.
                out.append(msg)
                if kind in (81, 70):
                    link.lost_queries += 1
                continue
            if kind in (81, 70):  # 'Q' / 'F'
                self._query(kind, msg)
            elif kind in _READ_BODIES:
                try:
                    _READ_BODIES[kind](self, msg)
                except ProtocolError:
                    self._as_is(kind, msg)
            elif kind == 69:  # 'E'
                effect = link.portals.pop(msg[5:msg.find(0, 5)], None) if link.portals else None
                if effect is None:
                    self._push(EXECUTE_TAG)
                else:
                    tag = Tag(T_EXECUTE)  # a DEALLOCATE runs: the names change now
                    tag.undo = effect.run()
                    self._push(Tag(T_INJ_CLOSE))
                    out.append(_CLOSE_STAND_IN)
                    if tag.undo is None:
                        # No such name: the server fails it, on a stand-in it does not have.
                        tag.data = error_response(
                            "ERROR", "26000", f'prepared statement "{effect.shown}" does not exist')
                    else:
                        self._push(Tag(T_INJ_PARSE))  # the stand-in it deallocates
                        out.append(_PARSE_STAND_IN)
                    self._push(tag)
                out.append(msg)
            elif kind == 83:  # 'S'
                self._push(SYNC_TAG)
                link.skipping = False
                link.segment += 1
                out.append(msg)
            else:
                out.append(msg)
        holds = self.holds
        if holds or link.held:
            return self._hold()
        data = b"".join(out)
        out.clear()
        return data

    def _as_is(self, kind: int, msg: bytes) -> None:
        """A body the pooler cannot read goes as it came. The server cannot read it either:
        it raises PostgreSQL's own error (08P01) and skips to the next Sync, as it would for
        a client of its own. Nothing was registered for it, so nothing is undone."""
        self._push(Tag(T_PARSE) if kind == 80 else _PLAIN_TAGS[kind])
        self.out.append(msg)

    def _query(self, kind: int, msg: bytes) -> None:
        link = self.link
        text = msg[5:]
        # A malformed text is not read: the server fails it as it is.
        if kind == 70:  # FunctionCall: any function, set_config included
            self.effects.append((OPAQUE, "FunctionCall", ""))
        hit = kind == 81 and might_affect_session(text) and _well_formed_text(text)
        dropped, link.unnamed = link.unnamed, None  # a simple query drops the unnamed statement
        if kind == 81 and _DDL_TEXT.search(text) is not None:
            # A Parse sent behind it must not share a statement analysed before it (the
            # scanner moves the generation on again at its command tag and its commit).
            schema_changed()
        if hit and link.limit:
            wire = self._protocol_name(text)
            if wire is not None:
                self._push(Tag(T_INJ_CLOSE))
                self._push(Tag(T_INJ_QUERY))
                tag = Tag(T_QUERY)
                tag.undo = _free(self.statements, wire)
                tag.restores = dropped
                self._push(tag)
                self.out += (_CLOSE_STAND_IN, _PREPARE_STAND_IN, _DEALLOCATE_STAND_IN_QUERY)
                return
        if hit and self.sql is not None and link.limit:
            verb = sql_prepared(text)
            if verb is not None:
                self._sql_statement(*verb)
                return
        clears = hit and drops_all_statements(text)
        undo = None
        if clears:
            single = len(split_statements(text.decode("utf-8", "replace"))) == 1
            undo = _clear_all(self.statements, self.sql, link, single)
        effects = inspect_text(text) if hit else []
        if effects:
            self.effects.extend(effects)
        if link.tags or clears or effects:
            tag = Tag(T_QUERY)
            tag.undo = undo
            tag.restores = dropped
            self._push(tag)
        else:
            link.untagged_z += 1
        self.out.append(msg)

    def _parse(self, msg: bytes) -> None:
        body = msg[5:]
        name, query, types = split_parse(body)
        hit = might_affect_session(query)
        if hit and types in (b"", b"\0\0") and self.sql is not None and self.link.limit:
            verb = sql_prepared(query)
            if verb is not None and verb[0] == "deallocate" and verb[1] not in self.sql:
                verb = None  # not an SQL-level statement of the client's: see _deallocated
            if verb is not None and not name:
                # PREPARE / EXECUTE / DEALLOCATE sent with the extended protocol (psycopg).
                self._sql_statement(*verb, extended=True)
                return
            if verb is not None:
                # A protocol statement that is an SQL-level PREPARE, EXECUTE or DEALLOCATE:
                # what it runs is decided at each Bind, as PostgreSQL looks the name up then.
                if name in self.statements:
                    shown = name.decode("utf-8", "replace")
                    self._fail("42P05", f'prepared statement "{shown}" already exists')
                    return
                stmt = Statement(statement_key(query, types), query, types)
                stmt.sql_verb = verb
                self.statements[name] = stmt
                self._synth(PARSE_COMPLETE)
                return
        if not name or not self.link.limit:
            if hit:  # the unnamed statement runs in this batch; a named one at each Bind
                self.effects.extend(inspect_text(query))
            link = self.link
            tag = Tag(T_PARSE)
            if not name:
                previous = link.unnamed
                link.unnamed = None
            if hit and not name and link.limit:
                # What it does to the client's names happens when it is executed.
                statements = self.statements
                wire = self._protocol_name(query, known=False)
                if wire is not None:
                    link.unnamed = Effect(partial(_free, statements, wire), wire)
                    msg = message(b"P", b"\0" + _DEALLOCATE_STAND_IN + b"\0" + types)
                elif drops_all_statements(query):
                    link.unnamed = Effect(partial(_clear_all, statements, self.sql, link, True))
                    link.needs_reset = True  # executed later, maybe: settle it at release
            if not name and (previous is not None or link.unnamed is not None):

                def restore() -> None:  # the Parse failed or was skipped: the old one stays
                    link.unnamed = previous

                tag.undo = restore
            self._push(tag)
            self.out.append(msg)
            return
        if name in self.statements:
            # PostgreSQL parses and analyses the text before it finds the name taken: a
            # syntax error, an aborted transaction or a missing table is the error then.
            self._push(Tag(T_INJ_PARSE))
            self.out.append(message(b"P", _DUPLICATE_NAME + b"\0" + query + b"\0" + types))
            self._push(Tag(T_INJ_CLOSE))
            self.out.append(_CLOSE_DUPLICATE)
            shown = name.decode("utf-8", "replace")
            self._fail("42P05", f'prepared statement "{shown}" already exists')
            return
        stmt = Statement(statement_key(query, types), query, types)
        statements = self.statements
        statements[name] = stmt
        link = self.link
        if (stmt.key in link.statements and stmt.key not in link.needs_close
                and self._settled(stmt.key)):
            link.statements.move_to_end(stmt.key)
            if not link.tags and not link.untagged_z and link.status != _FAILED:
                self.direct += PARSE_COMPLETE  # nothing ahead of it, and no failed block
                return

            def undo() -> None:
                if statements.get(name) is stmt:
                    del statements[name]

            # Whether the transaction will have failed by then is not known yet: the same
            # text parsed under a stand-in name fails where the client's would (in a failed
            # transaction, unless it is COMMIT or ROLLBACK), and answers for it otherwise.
            tag = Tag(T_PARSE)
            tag.undo = undo
            self._push(tag)
            self._push(Tag(T_INJ_CLOSE))
            self.out += (message(b"P", _PROBE_NAME + b"\0" + query + b"\0" + types),
                         _CLOSE_PROBE)
            return
        if stmt.key in link.statements:
            self._inject_close(stmt.key)  # parsed before a Sync not answered yet, or unusable
            link.needs_close.discard(stmt.key)
            link.statements.move_to_end(stmt.key)
        else:
            if stmt.key in link.needs_close:
                link.needs_close.discard(stmt.key)
                self._inject_close(stmt.key)
            self._make_room()
            link.statements[stmt.key] = None
        tag = self._parse_tag(T_PARSE, stmt.key)
        tag.owner = self.statements
        tag.name = name
        self._push(tag)
        self.out.append(message(b"P", self._parse_body(stmt)))
        self._follow_parse(stmt, self.statements, name)

    def _bind(self, msg: bytes) -> None:
        portal_end = msg.find(0, 5)
        name_end = msg.find(0, portal_end + 1) if portal_end >= 0 else -1
        if name_end < 0:
            raise ProtocolError(INVALID_STRING)
        self._bind_named(msg, portal_end, name_end, None)

    def _describe(self, msg: bytes) -> None:
        what, name = split_target(msg)
        if what != b"S" or not name or not self.link.limit:
            self._push(DESCRIBE_TAG)
            self.out.append(msg)
            return
        stmt = self.statements.get(name)
        if stmt is not None and stmt.key not in self.link.statements:
            known = self.link.known
            params = known.params.get(stmt.key)
            if params is not None and known.shapes.get(stmt.key) == b"":
                # Without result rows: PostgreSQL answers from what the statement was parsed
                # with, not analysing it again, so the pooler can too (the table it writes to
                # may be gone by now).
                self._synth(message(b"t", params) + _NO_DATA)
                return
        stmt = self._usable(name)
        if stmt is None:
            return
        self._push(stmt.describe_tag)
        self.out.append(stmt.describe)

    def _close(self, msg: bytes) -> None:
        what, name = split_target(msg)
        if what == b"S" and name and self.link.limit:
            # The server-side statement is shared; only the client's name goes away.
            statements = self.statements
            stmt = statements.pop(name, None)

            def undo() -> None:
                if stmt is not None:
                    statements.setdefault(name, stmt)

            self._synth(CLOSE_COMPLETE, undo)
            return
        self._push(CLOSE_TAG)
        self.out.append(msg)


# The messages whose bodies the Translator reads; what tags one that goes as it came.
_READ_BODIES: dict[int, Callable[[Translator, bytes], None]] = {
    80: Translator._parse, 66: Translator._bind, 68: Translator._describe,
    67: Translator._close,
}
_PLAIN_TAGS = {66: BIND_TAG, 68: DESCRIBE_TAG, 67: CLOSE_TAG}
