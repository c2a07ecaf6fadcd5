"""Named prepared statements across pooled server connections (sans-IO).

In transaction and statement mode a client's statements must survive being moved from one
server connection to another. The strategy:

* A client's named Parse is registered under the client's name, and sent to the server under a
  pooler-owned name derived from the query text and parameter types, so identical statements from
  many clients share one server-side statement. Bind, Describe and Close are rewritten to match.
* Every message sent to a server gets a *reply tag* in a per-link FIFO, naming the reply that
  ends it (Parse -> ParseComplete, Bind -> BindComplete, Describe -> RowDescription/NoData,
  Execute -> CommandComplete/EmptyQuery/PortalSuspended, Sync and Query -> ReadyForQuery). This is
  what lets the pooler slip its own messages in (a Parse for a statement this server lacks, a
  Close to evict one) and drop exactly their replies, and answer some messages itself
  (ParseComplete for a statement the server already has, CloseComplete for a client's Close) in
  the right place in the reply stream.
* Errors the pooler must raise in sequence (a duplicate name, an unknown name) are produced by
  sending a Parse that cannot succeed and replacing its error with the right one, so the server's
  own state (an aborted transaction, skipping to Sync) is exactly what PostgreSQL would have.
* After an error the server skips to the next Sync; the tags of the skipped messages are dropped
  and whatever they would have registered is undone. An error raised by a Sync itself (the
  implicit commit) or by a simple query skips nothing: that message's ReadyForQuery follows.

Plain simple queries, and extended-protocol batches on the unnamed statement that end with Sync,
sent while nothing is tagged are not tagged at all: their replies are only counted, on the
scanner's fast path.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections import OrderedDict, deque
from collections.abc import Callable

from ..errors import ProtocolError
from .messages import error_response, message, query
from .opaque import opaque_reason
from .session import OPAQUE, inspect_text, might_affect_session, sql_prepared

# Tag kinds.
T_SKIPZ = 0    # replies of untagged work: skip until `count` ReadyForQuery
T_QUERY = 1    # Query / FunctionCall: ends with ReadyForQuery
T_PARSE = 2    # client Parse: ParseComplete
T_BIND = 3     # Bind: BindComplete
T_CLOSE = 4    # client Close of a portal: CloseComplete
T_DESCRIBE = 5  # Describe: RowDescription or NoData (ParameterDescription comes first)
T_EXECUTE = 6  # Execute: CommandComplete, EmptyQueryResponse or PortalSuspended
T_SYNC = 7     # Sync: ReadyForQuery
T_INJ_PARSE = 8   # pooler's Parse: swallow ParseComplete
T_INJ_CLOSE = 9   # pooler's Close: swallow CloseComplete
T_SYNTH = 10   # no server message: emit `data` when this tag reaches the head
T_FAIL = 11    # pooler's failing Parse: replace its error with `data`
T_INJ_QUERY = 12  # pooler's simple query: drop all its replies, up to its ReadyForQuery

_TERMINAL: dict[int, bytes] = {
    T_QUERY: b"Z", T_PARSE: b"1", T_BIND: b"2", T_CLOSE: b"3", T_DESCRIBE: b"Tn",
    T_EXECUTE: b"CIs", T_SYNC: b"Z", T_INJ_PARSE: b"1", T_INJ_CLOSE: b"3",
}
# The replies the ReplyTracker must see while a tag of this kind is at the head, besides
# ErrorResponse: its terminal replies, ReadyForQuery for skipped replies, everything for the
# pooler's own query. Any other reply is forwarded untouched.
_WATCHED: dict[int, bytes] = {**_TERMINAL, T_SKIPZ: b"Z", T_INJ_QUERY: bytes(range(256))}

# How many accepted statement texts a pool remembers for answering clients without a server.
KNOWN_LIMIT = 10000

# Raw CopyData pieces (0), CopyData, CopyDone, CopyFail and Flush: nothing to tag.
_NO_REPLY = frozenset((0, ord("d"), ord("c"), ord("f"), ord("H")))

_HEADER = struct.Struct("!ci").pack  # type byte and length of a message
PARSE_COMPLETE = message(b"1")
_READY_IDLE = message(b"Z", b"I")
CLOSE_COMPLETE = message(b"3")
_FAILING_QUERY = b"pgusher: this statement stands in for an error\0"
_FAILING_NAME = b"pgusher_error"

# Statements whose execution drops every prepared statement of the session.
_DROPS_ALL = re.compile(rb"\b(?:discard\s+all|deallocate\s+(?:prepare\s+)?all)\b", re.I)


class Tag:
    """The reply that ends one message sent to a server (see the module notes).

    Tags of kind T_BIND, T_DESCRIBE, T_EXECUTE, T_SYNC and T_CLOSE never change once made, so
    one object serves every message of its kind (per statement, when it has a key).
    """

    __slots__ = ("clears", "count", "data", "errored", "key", "kind", "name", "owner", "undo",
                 "watch")

    def __init__(self, kind: int, key: str | None = None) -> None:
        self.kind = kind
        self.key = key
        self.watch = _WATCHED.get(kind, b"")
        self.count = 0
        self.data = b""
        self.errored = False
        self.clears = False
        self.owner: dict[bytes, Statement] | None = None
        self.name = b""
        self.undo: Callable[[], None] | None = None  # what to take back if this fails


class SqlStatement:
    """A client's SQL-level PREPAREd statement: its name on servers and its definition."""

    __slots__ = ("definition", "opaque", "server_name")

    def __init__(self, server_name: str, definition: str) -> None:
        self.server_name = server_name
        self.definition = definition  # "[(types)] AS body"
        # What EXECUTE runs: a body that may change the session unseen makes it opaque.
        self.opaque = opaque_reason(definition.encode())


def sql_server_name(namespace: str, name: str, definition: str) -> str:
    """The name on servers: a new definition under the same client name is a new statement,
    so a server that still holds the old one can never run it for the new name."""
    digest = hashlib.blake2b(f"{name}\0{definition}".encode(), digest_size=8).hexdigest()
    return f"pgusher_{namespace}_{digest}"


class Statement:
    """A client's named statement: the pooler-owned name and the Parse body for servers."""

    __slots__ = ("bind_tag", "describe", "describe_tag", "effects", "key", "parse_body", "query",
                 "sql_verb", "types", "wire_name")

    def __init__(self, key: str, query: bytes, types: bytes) -> None:
        self.key = key
        self.query = query
        self.types = types
        # A text that is an SQL-level PREPARE, EXECUTE or DEALLOCATE: (verb, SQL name, rest),
        # resolved at each use.
        self.sql_verb: tuple[str, str, str] | None = None
        # What executing it does to the session: every Bind of it says so again.
        self.effects = inspect_text(query) if might_affect_session(query) else []
        self.wire_name = key.encode() + b"\0"  # as Parse, Bind and Describe carry it
        self.parse_body = self.wire_name + query + b"\0" + types
        self.describe = message(b"D", b"S" + self.wire_name)
        self.bind_tag = Tag(T_BIND, key)
        self.describe_tag = Tag(T_DESCRIBE, key)


_BIND_TAG = Tag(T_BIND)
_DESCRIBE_TAG = Tag(T_DESCRIBE)
_EXECUTE_TAG = Tag(T_EXECUTE)
_SYNC_TAG = Tag(T_SYNC)
_CLOSE_TAG = Tag(T_CLOSE)


def statement_key(query: bytes, types: bytes) -> str:
    digest = hashlib.blake2b(query + b"\0" + types, digest_size=10).hexdigest()
    return "pgusher_" + digest


# PostgreSQL's words (pqformat.c) for a body it cannot read.
INVALID_STRING = "invalid string in message"


def split_parse(body: bytes) -> tuple[bytes, bytes, bytes]:
    """Parse body -> (name, query, parameter type section).

    ProtocolError when either string lacks its NUL, where PostgreSQL fails the same way.
    """
    a = body.find(0)
    b = body.find(0, a + 1) if a >= 0 else -1
    if b < 0:
        raise ProtocolError(INVALID_STRING)
    return body[:a], body[a + 1:b], body[b + 1:]


def split_target(msg: bytes) -> tuple[bytes, bytes]:
    """Describe or Close message -> (what: b"S" or b"P", name).

    ProtocolError for a body PostgreSQL cannot read either: empty, a name without its NUL,
    or bytes after it.
    """
    if len(msg) < 6:
        raise ProtocolError("no data left in message")
    end = msg.find(0, 6)
    if end < 0:
        raise ProtocolError(INVALID_STRING)
    if end != len(msg) - 1:
        raise ProtocolError("invalid message format")
    return msg[5:6], msg[6:end]


def _well_formed_text(text: bytes) -> bool:
    """A Query body is one string: its only NUL is the last byte."""
    return text.find(0) == len(text) - 1


def drops_all_statements(query: bytes) -> bool:
    return _DROPS_ALL.search(query) is not None


# Parse texts already run through the session pre-filter: drivers repeat the same few.
_TEXT_HITS: dict[bytes, bool] = {}
_TEXT_HITS_LIMIT = 512
_TEXT_HITS_MAX_LEN = 2048


def _text_hit(query: bytes) -> bool:
    hit = _TEXT_HITS.get(query)
    if hit is None:
        hit = might_affect_session(query)
        if len(query) <= _TEXT_HITS_MAX_LEN:
            if len(_TEXT_HITS) >= _TEXT_HITS_LIMIT:
                _TEXT_HITS.clear()
            _TEXT_HITS[query] = hit
    return hit


def untagged_syncs(messages: list[tuple[int, bytes]]) -> int:
    """How many Syncs a batch holds if it can go to the server as it is, untagged; else 0.

    Such a batch ends with a Sync and uses only the unnamed statement (a Parse whose text
    cannot change the session, Bind and Describe of it), portals, Execute and Flush. The
    Translator would not rewrite any of it, and every error it can cause ends at one of its
    own Syncs, so its replies only need counting, like those of a plain simple query.
    """
    if messages[-1][0] != 83:
        return 0
    syncs = 0
    try:
        for kind, msg in messages:
            if kind == 83:  # Sync
                syncs += 1
            elif kind == 69 or kind == 72:  # Execute, Flush
                continue
            elif kind == 80:  # Parse: the unnamed statement, with a text that changes nothing
                if msg[5] != 0 or _text_hit(msg[6:msg.index(0, 6)]):
                    return 0
            elif kind == 66:  # Bind to the unnamed statement
                if msg[msg.index(0, 5) + 1] != 0:
                    return 0
            elif kind == 68:  # Describe: a portal, or the unnamed statement
                if msg[5] == 83 and len(msg) > 7:
                    return 0
            else:
                return 0
    except (IndexError, ValueError):
        return 0  # malformed: the Translator deals with it as it always has
    return syncs


class LinkState:
    """What the pooler knows about one server connection's statements and pending replies."""

    __slots__ = ("errors", "known", "limit", "lost_queries", "needs_close", "needs_reset",
                 "skipping", "statements", "tags", "untagged_z")

    def __init__(self, limit: int, known: set[str] | None = None) -> None:
        self.limit = limit
        # Statement keys some server of the pool has accepted (shared by the pool's links).
        self.known: set[str] = known if known is not None else set()
        self.statements: OrderedDict[str, None] = OrderedDict()  # LRU, oldest first
        self.needs_close: set[str] = set()  # on the server but unusable (plan changed)
        self.tags: deque[Tag] = deque()
        self.untagged_z = 0      # ReadyForQuery still due for untagged work
        self.skipping = False    # the server is skipping messages until Sync
        self.lost_queries = 0    # queries the server skipped (their ReadyForQuery never comes)
        self.needs_reset = False  # prepared-statement state is uncertain: reset before reuse
        self.errors = 0  # errors seen in tagged replies (SET effects are kept only without)

    def forget_all(self) -> None:
        self.statements.clear()
        self.needs_close.clear()


class Translator:
    """Rewrites one batch of whole client messages for a given server link."""

    __slots__ = ("direct", "effects", "link", "namespace", "out", "sql", "statements")

    def __init__(self, link: LinkState, statements: dict[bytes, Statement],
                 sql: dict[str, SqlStatement] | None = None, namespace: str = "") -> None:
        self.link = link
        self.statements = statements
        self.sql = sql  # the client's SQL-level PREPAREd statements, by name
        self.namespace = namespace  # makes the client's SQL-level names unique on servers
        self.out: list[bytes] = []
        self.direct = b""  # synthetic replies that may go to the client at once
        self.effects: list[tuple[str, str, str]] = []  # what the SQL does to the session

    def _push(self, tag: Tag) -> None:
        link = self.link
        if not link.tags and link.untagged_z:
            skip = Tag(T_SKIPZ)
            skip.count = link.untagged_z
            link.untagged_z = 0
            link.tags.append(skip)
        link.tags.append(tag)

    def _synth(self, data: bytes) -> None:
        link = self.link
        if not link.tags and not link.untagged_z:
            self.direct += data  # nothing ahead of it: it can go now
            return
        tag = Tag(T_SYNTH)
        tag.data = data
        self._push(tag)

    def _fail(self, sqlstate: str, text: str) -> None:
        tag = Tag(T_FAIL)
        tag.data = error_response("ERROR", sqlstate, text)
        self._push(tag)
        self.out.append(message(b"P", _FAILING_NAME + b"\0" + _FAILING_QUERY + b"\0\0"))

    def _ensure(self, stmt: Statement) -> None:
        """Make sure the server has ``stmt``; slip in a Parse (and evictions) if not."""
        link = self.link
        key = stmt.key
        if key in link.statements:
            link.statements.move_to_end(key)
            return
        if key in link.needs_close:
            link.needs_close.discard(key)
            self._inject_close(key)
        self._make_room()
        link.statements[key] = None
        tag = Tag(T_INJ_PARSE, key)
        self._push(tag)
        self.out.append(message(b"P", stmt.parse_body))

    def _make_room(self) -> None:
        link = self.link
        while len(link.statements) >= link.limit > 0:
            old, _ = link.statements.popitem(last=False)
            self._inject_close(old)

    def _inject_close(self, key: str) -> None:
        self._push(Tag(T_INJ_CLOSE, key))
        self.out.append(message(b"C", b"S" + key.encode() + b"\0"))

    def feed(self, messages: list[tuple[int, bytes]]) -> bytes:
        link = self.link
        out = self.out
        for kind, msg in messages:
            if kind in _NO_REPLY:
                out.append(msg)  # raw CopyData pieces, CopyDone/CopyFail, Flush: no reply
                continue
            if kind > 255:  # the head of a message too long to hold: see streamed.py
                from .streamed import feed_big
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
                self._push(_EXECUTE_TAG)
                out.append(msg)
            elif kind == 83:  # 'S'
                self._push(_SYNC_TAG)
                link.skipping = False
                out.append(msg)
            else:
                out.append(msg)
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
        hit = kind == 81 and might_affect_session(text) and _well_formed_text(text)
        if hit and self.sql is not None and link.limit:
            verb = sql_prepared(text)
            if verb is not None:
                self._sql_statement(*verb)
                return
        clears = hit and drops_all_statements(text)
        if clears:
            self.statements.clear()
            if self.sql is not None:
                self.sql.clear()
        effects = inspect_text(text) if hit else []
        if effects:
            self.effects.extend(effects)
        if link.tags or clears or effects:
            tag = Tag(T_QUERY)
            tag.clears = clears
            self._push(tag)
        else:
            link.untagged_z += 1
        self.out.append(msg)

    # ---- SQL-level PREPARE / EXECUTE / DEALLOCATE (one statement per query)

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

    def _sql_statement(self, verb: str, name: str, rest: str, extended: bool = False) -> None:
        resolved = self._sql_resolve(verb, name, rest, extended)
        if resolved is not None:
            self._sql_send(resolved[0], extended, resolved[1])

    def _sql_resolve(self, verb: str, name: str, rest: str, extended: bool,
                     ) -> tuple[str, Callable[[], None] | None] | None:
        """The server's text for the client's PREPARE, EXECUTE or DEALLOCATE of ``name``,
        and what to undo if it fails; None after answering with the error PostgreSQL gives."""
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
        if found is None:
            self._sql_fail("26000", f'prepared statement "{shown}" does not exist', extended)
            return None
        self._sql_ensure(found)
        if verb == "execute":
            if found.opaque:
                self.effects.append((OPAQUE, "EXECUTE", ""))
            return f"EXECUTE {found.server_name}{rest}", None
        del sql[name]
        link.statements.pop(found.server_name, None)
        return f"DEALLOCATE {found.server_name}", None

    def _parse(self, msg: bytes) -> None:
        body = msg[5:]
        name, query, types = split_parse(body)
        hit = might_affect_session(query)
        if hit and types in (b"", b"\0\0") and self.sql is not None and self.link.limit:
            verb = sql_prepared(query)
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
            tag = Tag(T_PARSE)
            tag.clears = hit and drops_all_statements(query)
            if tag.clears:
                self.statements.clear()
                self.link.needs_reset = True  # executed later, maybe: settle it at release
            self._push(tag)
            self.out.append(msg)
            return
        if name in self.statements:
            shown = name.decode("utf-8", "replace")
            self._fail("42P05", f'prepared statement "{shown}" already exists')
            return
        stmt = Statement(statement_key(query, types), query, types)
        self.statements[name] = stmt
        link = self.link
        if stmt.key in link.statements and stmt.key not in link.needs_close:
            link.statements.move_to_end(stmt.key)
            self._synth(PARSE_COMPLETE)
            return
        if stmt.key in link.needs_close:
            link.needs_close.discard(stmt.key)
            self._inject_close(stmt.key)
        self._make_room()
        link.statements[stmt.key] = None
        tag = Tag(T_PARSE, stmt.key)
        tag.owner = self.statements
        tag.name = name
        self._push(tag)
        self.out.append(message(b"P", stmt.parse_body))

    def _usable(self, name: bytes) -> Statement | None:
        """The client's statement, made ready on this server; None after answering 26000."""
        stmt = self.statements.get(name)
        if stmt is None:
            shown = name.decode("utf-8", "replace")
            self._fail("26000", f'prepared statement "{shown}" does not exist')
            return None
        if stmt.sql_verb is not None:
            return self._resolve_sql(stmt)
        self._ensure(stmt)
        return stmt

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
        self._ensure(server_stmt)
        return server_stmt

    def _bind(self, msg: bytes) -> None:
        portal_end = msg.find(0, 5)
        name_end = msg.find(0, portal_end + 1) if portal_end >= 0 else -1
        if name_end < 0:
            raise ProtocolError(INVALID_STRING)
        if name_end == portal_end + 1 or not self.link.limit:
            if name_end != portal_end + 1:
                # A named statement the pooler does not follow: its text is unknown here.
                self.effects.append((OPAQUE, "prepared statement", ""))
            self._push(_BIND_TAG)
            self.out.append(msg)
            return
        name = msg[portal_end + 1:name_end]
        stmt = self._usable(name)
        if stmt is None:
            return
        if stmt.effects:
            self.effects.extend(stmt.effects)
        self._push(stmt.bind_tag)
        # The same Bind with the pooler's name: header, portal, name, the rest as it came.
        wire_name = stmt.wire_name
        self.out += (_HEADER(b"B", len(msg) - 2 - len(name) + len(wire_name)),
                     msg[5:portal_end + 1], wire_name, msg[name_end + 1:])

    def _describe(self, msg: bytes) -> None:
        what, name = split_target(msg)
        if what != b"S" or not name or not self.link.limit:
            self._push(_DESCRIBE_TAG)
            self.out.append(msg)
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
            self.statements.pop(name, None)
            self._synth(CLOSE_COMPLETE)
            return
        self._push(_CLOSE_TAG)
        self.out.append(msg)


# The messages whose bodies the Translator reads; what tags one that goes as it came.
_READ_BODIES: dict[int, Callable[[Translator, bytes], None]] = {
    80: Translator._parse, 66: Translator._bind, 68: Translator._describe,
    67: Translator._close,
}
_PLAIN_TAGS = {66: _BIND_TAG, 68: _DESCRIBE_TAG, 67: _CLOSE_TAG}

_ERROR = ord("E")
_SQLSTATE = re.compile(rb"C([0-9A-Z]{5})\0")
_PLAN_CHANGED = "0A000"


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
        tags.popleft()
        if hk == T_QUERY and head.clears and not head.errored:
            self.link.forget_all()
        elif (hk in (T_PARSE, T_INJ_PARSE)) and head.key is not None:
            known = self.link.known
            if len(known) >= KNOWN_LIMIT:
                known.clear()
            known.add(head.key)
        extra = self._drain_synthetic() if tags and tags[0].kind == T_SYNTH else b""
        return hk not in (T_INJ_PARSE, T_INJ_CLOSE), extra

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
            head.errored = True
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
        if hk == T_FAIL:
            replacement = head.data
        elif hk in (T_INJ_PARSE, T_PARSE):
            if head.undo is not None:
                head.undo()
                head.undo = None
            if head.key is not None:
                link.statements.pop(head.key, None)
            if head.owner is not None:
                head.owner.pop(head.name, None)
        elif hk == T_INJ_CLOSE and head.key is not None:
            link.needs_close.add(head.key)
        if code == _PLAN_CHANGED and head.key is not None:
            # "cached plan must not change result type": re-prepare on next use.
            link.statements.pop(head.key, None)
            link.needs_close.add(head.key)
        # The server now skips to the next Sync: undo what the skipped messages stood for.
        while tags and tags[0].kind != T_SYNC:
            skipped = tags.popleft()
            if skipped.undo is not None:
                skipped.undo()
                skipped.undo = None
            if skipped.kind in (T_INJ_PARSE, T_PARSE) and skipped.key is not None:
                link.statements.pop(skipped.key, None)
                if skipped.owner is not None:
                    skipped.owner.pop(skipped.name, None)
            elif skipped.kind == T_QUERY:
                link.lost_queries += 1
        if not tags:
            link.skipping = True  # its Sync has not been sent yet
        if replacement:
            return False, replacement
        return True, b""



def answer_without_server(messages: list[tuple[int, bytes]], statements: dict[bytes, Statement],
                          known: set[str]) -> bytes | None:
    """Reply to an idle client's batch with no server, if every message allows it.

    Parse of a statement some server already accepted, Close of a statement, Flush and Sync can
    be answered by the pooler (an idle client in transaction mode has no open transaction).
    This matters: drivers that prepare synchronously (pgbench -M prepared) would otherwise
    block a thread waiting for a server while other clients on that thread hold every server.
    Messages no server replies to (Flush, and copy messages outside COPY, which PostgreSQL
    ignores) are dropped: a server linked for them alone would get no ReadyForQuery, the only
    point where it is released. Returns None, changing nothing, when any message needs a server.
    """
    added: dict[bytes, Statement] = {}
    closed: list[bytes] = []
    for kind, msg in messages:
        if kind == 80:  # Parse
            if msg[5:6] == b"\0":
                return None  # the unnamed statement: the server must have it
            try:
                name, query, types = split_parse(msg[5:])
            except ProtocolError:
                return None  # the server answers what it cannot read either
            if not name or name in statements or name in added:
                return None
            stmt = Statement(statement_key(query, types), query, types)
            if stmt.key not in known:
                return None
            added[name] = stmt
        elif kind == 67:  # Close
            try:
                what, name = split_target(msg)
            except ProtocolError:
                return None
            if what != b"S":
                return None
            closed.append(name)
        elif kind != 83 and kind not in _NO_REPLY:  # anything else needs a server
            return None
    replies = []
    for kind, msg in messages:
        if kind == 80:
            name = split_parse(msg[5:])[0]
            statements[name] = added[name]
            replies.append(PARSE_COMPLETE)
        elif kind == 67:
            statements.pop(msg[6:-1], None)
            replies.append(CLOSE_COMPLETE)
        elif kind == 83:
            replies.append(_READY_IDLE)
    return b"".join(replies)
