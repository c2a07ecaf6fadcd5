"""What every rewritten client message goes through, for one server link (sans-IO).

The Rewriter is the part of the Translator (translator.py) that the heads of messages too long
to hold (streamed.py) need as well. It tags what is sent to the server (prepared.Tag), puts the
pooler's own replies in their place in the reply stream, and turns a client's statement name
into a statement the server has:

* A statement the server lacks is parsed there first, under its key, with the parameter types
  the pool's first server gave it, evicting the least recently used one beyond
  max_prepared_statements; a Describe follows, to learn its result row or to check that it is
  still the one the pool learned, holding back what comes after it until the server answers.
* Errors the pooler must raise in sequence (a duplicate name, an unknown name) are produced by
  sending a Parse that cannot succeed and replacing its error with the right one, so the server's
  own state (an aborted transaction, skipping to Sync) is exactly what PostgreSQL would have.
* A client's SQL-level PREPAREd statements run on servers under names of the pooler's, made
  from the client's name and definition, and are prepared on each server before use.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

from .link import LinkState
from .messages import HEADER, error_response, message, query
from .prepared import (
    BIND_TAG,
    FAILING_PARSE,
    PLAN_CHANGED_TEXT,
    T_FAIL,
    T_INJ_CLOSE,
    T_INJ_DESCRIBE,
    T_INJ_PARSE,
    T_INJ_QUERY,
    T_PARSE,
    T_QUERY,
    T_SKIPZ,
    T_SYNTH,
    SqlStatement,
    Statement,
    Tag,
    sql_server_name,
    statement_key,
)
from .session import OPAQUE, inspect_text, sql_prepared

FLUSH = message(b"H")
_HEADER = HEADER.pack  # type byte and length of a message


class Rewriter:
    """Tags, the pooler's own messages and replies, and statement names for one server link;
    the Translator rewrites a batch of client messages with them."""

    __slots__ = ("direct", "effects", "holds", "link", "namespace", "out", "sql", "statements")

    def __init__(self, link: LinkState, statements: dict[bytes, Statement],
                 sql: dict[str, SqlStatement] | None = None, namespace: str = "") -> None:
        self.link = link
        self.statements = statements
        self.sql = sql  # the client's SQL-level PREPAREd statements, by name
        self.namespace = namespace  # makes the client's SQL-level names unique on servers
        self.out: list[bytes] = []
        self.direct = b""  # synthetic replies that may go to the client at once
        self.effects: list[tuple[str, str, str]] = []  # what the SQL does to the session
        self.holds: list[int] = []  # where in ``out`` a check starts holding the rest back

    def _push(self, tag: Tag) -> None:
        link = self.link
        if not link.tags and link.untagged_z:
            skip = Tag(T_SKIPZ)
            skip.count = link.untagged_z
            link.untagged_z = 0
            link.tags.append(skip)
        if tag.undo is not None or tag.owner is not None or tag.restores is not None:
            tag.seg = link.segment  # it changes the client's names, unless skipped
            if link.name_seg < 0:
                link.name_seg = link.segment
            if tag.kind in (T_QUERY, T_INJ_QUERY):
                # A query's error skips nothing after it: what follows depends on how it
                # ends as much as on what a Sync ends.
                link.segment += 1
        link.tags.append(tag)

    def _unsettled(self) -> bool:
        """Whether a change to the client's names made before the last Sync may still be
        taken back (an error before that Sync would skip it)."""
        link = self.link
        if link.name_seg < 0 or link.name_seg >= link.segment:
            return False
        oldest = -1
        for tag in link.tags:
            if tag.seg >= 0 and (oldest < 0 or tag.seg < oldest):
                oldest = tag.seg
        link.name_seg = oldest
        return 0 <= oldest < link.segment

    def _synth(self, data: bytes, undo: Callable[[], None] | None = None) -> None:
        """A reply of the pooler's own, in its place; ``undo`` takes back what the message
        did if an earlier error makes the server skip past it."""
        link = self.link
        if not link.tags and not link.untagged_z:
            self.direct += data  # nothing ahead of it: it can go now
            return
        tag = Tag(T_SYNTH)
        tag.data = data
        tag.undo = undo
        self._push(tag)

    def _fail(self, sqlstate: str, text: str) -> None:
        tag = Tag(T_FAIL)
        tag.data = error_response("ERROR", sqlstate, text)
        self._push(tag)
        self.out.append(FAILING_PARSE)

    def _ensure(self, stmt: Statement) -> bool:
        """Make sure the server has ``stmt``; slip in a Parse (and evictions) if not.

        False, after answering 0A000, when the statement's result type has changed since the
        client parsed it: PostgreSQL fails every later use of such a statement.
        """
        link = self.link
        key = stmt.key
        stale = link.known.stale
        if stale and key in stale:
            self._fail("0A000", PLAN_CHANGED_TEXT)
            return False
        if key in link.statements:
            link.statements.move_to_end(key)
            if self._settled(key):
                return True
            self._inject_close(key)  # its Parse may be skipped, and may not: parse it again
        else:
            if key in link.needs_close:
                link.needs_close.discard(key)
                self._inject_close(key)
            self._make_room()
            link.statements[key] = None
        self._push(self._parse_tag(T_INJ_PARSE, key))
        self.out.append(message(b"P", self._parse_body(stmt)))
        self._follow_parse(stmt, None, b"")
        return True

    def _settled(self, key: str) -> bool:
        """Whether a statement on this server's list can be used by what is sent now: its
        Parse has been answered, or it was sent since the last Sync (an error that skips it
        skips this too). One sent before a Sync whose reply is still to come may yet be
        skipped by an error before that Sync."""
        started = self.link.parsing.get(key)
        return started is None or started == self.link.segment

    def _parse_tag(self, kind: int, key: str) -> Tag:
        """The tag of a Parse of ``key`` on this server, noting it as not yet answered."""
        link = self.link
        tag = Tag(kind, key)
        tag.count = link.segment
        link.parsing[key] = link.segment
        return tag

    def _parse_body(self, stmt: Statement) -> bytes:
        """The Parse for this server: with the parameter types the pool's first server gave
        the statement, so that it means the same on every server."""
        params = self.link.known.params.get(stmt.key)
        if params is None:
            return stmt.parse_body
        return stmt.wire_name + stmt.query + b"\0" + params

    def _follow_parse(self, stmt: Statement, owner: dict[bytes, Statement] | None,
                      name: bytes) -> None:
        """After a Parse of ``stmt`` on this server, describe it: the first time in the pool,
        to learn its parameter types and result row; later, to check that the result row is
        still the one the pool learned, holding back what follows until the server answers.
        A statement without result rows (NoData) is not checked: it cannot gain one.
        """
        link = self.link
        shape = link.known.shapes.get(stmt.key)
        if shape == b"":
            return
        tag = Tag(T_INJ_DESCRIBE, stmt.key)
        tag.owner = owner
        tag.name = name
        self._push(tag)
        self.out.append(stmt.describe)
        if shape is None:
            return
        tag.data = shape
        tag.holds = True
        self.out.append(FLUSH)  # the server answers now, not at the client's Sync
        self.holds.append(len(self.out))

        def release() -> None:  # skipped or failed: what waited goes to the server as it is
            if link.held:
                link.release += link.held.popleft()

        tag.undo = release

    def _hold(self) -> bytes:
        """Split the output at its checks: what comes before the first (and after no check
        still pending) goes now, each later piece waits for the reply to its own check."""
        link = self.link
        out = self.out
        cuts = [0, *self.holds, len(out)]
        pieces = [b"".join(out[a:b]) for a, b in pairwise(cuts)]
        out.clear()
        self.holds.clear()
        held = link.held
        if held:
            held[-1] += pieces[0]
            now = b""
        else:
            now = pieces[0]
        held.extend(pieces[1:])
        return now

    def _make_room(self) -> None:
        link = self.link
        while len(link.statements) >= link.limit > 0:
            old, _ = link.statements.popitem(last=False)
            self._inject_close(old)

    def _inject_close(self, key: str) -> None:
        self._push(Tag(T_INJ_CLOSE, key))
        self.out.append(message(b"C", b"S" + key.encode() + b"\0"))

    def _bind_named(self, msg: bytes, portal_end: int, name_end: int,
                    missing: bytes | None) -> None:
        """A Bind, whole or the head of a long one, whose portal name ends at ``portal_end``
        and statement name at ``name_end``: the portal inherits what the unnamed statement
        does to the client's names, and a named statement is bound under its name on this
        server. A name the client never prepared is answered with 26000; the Bind is then
        dropped (``missing`` None) or sent under the name ``missing``, which no server has
        (a long Bind whose rest is on its way)."""
        link = self.link
        unnamed = name_end == portal_end + 1
        if link.portals or link.unnamed is not None:
            portal = msg[5:portal_end]
            if unnamed and link.unnamed is not None:
                link.portals[portal] = link.unnamed
            else:
                link.portals.pop(portal, None)
        if unnamed or not link.limit:
            if not unnamed:
                # A named statement the pooler does not follow: its text is unknown here.
                self.effects.append((OPAQUE, "prepared statement", ""))
            self._push(BIND_TAG)
            self.out.append(msg)
            return
        name = msg[portal_end + 1:name_end]
        stmt = self._usable(name)
        if stmt is None:
            if missing is None:
                return
            wire_name = missing
        else:
            if stmt.effects:
                self.effects.extend(stmt.effects)
            self._push(stmt.bind_tag)
            wire_name = stmt.wire_name
        # The same Bind under the server's name: header, portal, name, the rest as it came.
        length = HEADER.unpack_from(msg)[1] - 1 - len(name) + len(wire_name)  # names end in 0
        self.out += (_HEADER(b"B", length), msg[5:portal_end + 1], wire_name,
                     msg[name_end + 1:])

    def _usable(self, name: bytes) -> Statement | None:
        """The client's statement, made ready on this server; None after answering 26000."""
        stmt = self.statements.get(name)
        if stmt is None:
            shown = name.decode("utf-8", "replace")
            self._fail("26000", f'prepared statement "{shown}" does not exist')
            return None
        if stmt.sql_verb is not None:
            return self._resolve_sql(stmt)
        return stmt if self._ensure(stmt) else None

    def _resolve_sql(self, stmt: Statement) -> Statement | None:
        """The server statement an SQL-level PREPARE, EXECUTE or DEALLOCATE runs now (the
        name the current definition has on servers), prepared there first if missing."""
        assert stmt.sql_verb is not None
        effects = len(self.effects)
        resolved = self._sql_resolve(*stmt.sql_verb, extended=True)
        if resolved is None:
            return None
        text = resolved[0].encode()
        server_stmt = Statement(statement_key(text, stmt.types), text, stmt.types)
        server_stmt.effects = self.effects[effects:]  # only what _sql_resolve found
        del self.effects[effects:]
        return server_stmt if self._ensure(server_stmt) else None

    # ---- SQL-level PREPARE / EXECUTE / DEALLOCATE (one statement per query)

    def _protocol_name(self, text: bytes, known: bool = True) -> bytes | None:
        """The client's protocol-level statement that ``text``, one SQL DEALLOCATE, names
        (with ``known`` false: the name, if it is not an SQL-level one of the client's)."""
        if text.lower().find(b"deallocate") < 0:
            return None
        found = sql_prepared(text)
        if found is None or found[0] != "deallocate":
            return None
        name = found[1]
        if self.sql is not None and name in self.sql:
            return None  # an SQL-level statement of the client's
        if name.startswith('"'):
            name = name[1:-1].replace('""', '"')
        wire = name.encode()
        return wire if wire in self.statements or not known else None

    def _inject_query(self, sql: str, undo: Callable[[], None] | None = None) -> None:
        tag = Tag(T_INJ_QUERY)
        tag.undo = undo
        self._push(tag)
        self.out.append(query(sql))

    def _sql_fail(self, sqlstate: str, text: str, extended: bool) -> None:
        """Answer with an error raised by the server itself, so the transaction state is
        exactly what PostgreSQL would leave."""
        if extended:
            self._fail(sqlstate, text)  # a failing Parse: the server skips to Sync
            return
        body = text.replace("'", "''")
        self._push(Tag(T_QUERY))
        self.out.append(query(f"DO $pgusher$BEGIN RAISE EXCEPTION USING ERRCODE = '{sqlstate}', "
                              f"MESSAGE = '{body}'; END$pgusher$"))

    def _sql_room(self) -> None:
        link = self.link
        while len(link.statements) >= link.limit > 0:
            old, _ = link.statements.popitem(last=False)
            self._inject_query(f"DEALLOCATE {old}")

    def _sql_ensure(self, stmt: SqlStatement) -> None:
        link = self.link
        if stmt.server_name in link.statements:
            link.statements.move_to_end(stmt.server_name)
            return
        self._sql_room()
        link.statements[stmt.server_name] = None
        self._inject_query(f"PREPARE {stmt.server_name} {stmt.definition}",
                           lambda: link.statements.pop(stmt.server_name, None) and None)

    def _sql_send(self, text: str, extended: bool,
                  undo: Callable[[], None] | None = None) -> None:
        """The client's statement as the server must run it: a Query, or in the extended
        protocol a Parse of the unnamed statement (its Bind and Execute follow as they came)."""
        tag = Tag(T_PARSE if extended else T_QUERY)
        tag.undo = undo
        self._push(tag)
        if extended:
            self.out.append(message(b"P", b"\0" + text.encode() + b"\0\0\0"))
        else:
            self.out.append(query(text))

    def _sql_statement(self, verb: str, name: str, rest: str, head: str = "",
                       extended: bool = False) -> None:
        if head:
            self.effects.extend(inspect_text(head.encode()))  # CREATE TEMP TABLE ... AS
        resolved = self._sql_resolve(verb, name, rest, head, extended)
        if resolved is not None:
            self._sql_send(resolved[0], extended, resolved[1])

    def _sql_resolve(self, verb: str, name: str, rest: str, head: str, extended: bool,
                     ) -> tuple[str, Callable[[], None] | None] | None:
        """The server's text for the client's PREPARE, EXECUTE or DEALLOCATE of ``name``,
        and what to undo if it fails; None after answering with the error PostgreSQL gives.
        PostgreSQL has one name space for SQL-level and protocol-level statements: EXECUTE
        (in EXPLAIN and CREATE TABLE AS too) runs a protocol-level one of that name."""
        sql = self.sql
        assert sql is not None
        link = self.link
        shown = name.strip('"')
        if verb == "prepare":
            if name in sql:
                self._sql_fail("42P05", f'prepared statement "{shown}" already exists',
                               extended)
                return None
            stmt = SqlStatement(sql_server_name(self.namespace, name, rest), rest)
            if stmt.server_name in link.statements:
                link.statements.pop(stmt.server_name)
                self._inject_query(f"DEALLOCATE {stmt.server_name}")
            self._sql_room()
            sql[name] = stmt
            link.statements[stmt.server_name] = None

            def undo() -> None:
                if sql.get(name) is stmt:
                    del sql[name]
                link.statements.pop(stmt.server_name, None)

            return f"PREPARE {stmt.server_name} {rest}", undo
        found = sql.get(name)
        if found is None and verb == "execute":
            protocol = self.statements.get(
                (name[1:-1].replace('""', '"') if name.startswith('"') else name).encode())
            if protocol is not None and protocol.sql_verb is None:
                if not self._ensure(protocol):
                    return None
                if protocol.effects:
                    self.effects.extend(protocol.effects)
                return f"{head}EXECUTE {protocol.key}{rest}", None
        if found is None:
            self._sql_fail("26000", f'prepared statement "{shown}" does not exist', extended)
            return None
        self._sql_ensure(found)
        if verb == "execute":
            if found.opaque:
                self.effects.append((OPAQUE, "EXECUTE", ""))
            return f"{head}EXECUTE {found.server_name}{rest}", None
        del sql[name]
        link.statements.pop(found.server_name, None)
        return f"DEALLOCATE {found.server_name}", None
