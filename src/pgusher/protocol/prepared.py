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
* A shared statement must mean what the client's Parse meant on a direct connection: its key
  names the schema generation it was parsed in, the first Parse of a key in a pool is
  described to learn its parameter types and result row, and a Parse of it on another server
  pins those types and is checked against that row before the client's next messages go
  (see KnownStatements, and replies.py for the replies that are matched to the tags).
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections import OrderedDict, deque
from collections.abc import Callable
from functools import partial
from itertools import pairwise

from ..errors import ProtocolError
from .messages import error_response, message, query
from .opaque import opaque_reason
from .session import OPAQUE, inspect_text, might_affect_session, split_statements, sql_prepared

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
T_INJ_DESCRIBE = 13  # pooler's Describe of a statement it just parsed: learn or check its shape

_TERMINAL: dict[int, bytes] = {
    T_QUERY: b"Z", T_PARSE: b"1", T_BIND: b"2", T_CLOSE: b"3", T_DESCRIBE: b"Tn",
    T_EXECUTE: b"CIs", T_SYNC: b"Z", T_INJ_PARSE: b"1", T_INJ_CLOSE: b"3", T_INJ_DESCRIBE: b"Tn",
}
# The replies the ReplyTracker must see while a tag of this kind is at the head, besides
# ErrorResponse: its terminal replies, ReadyForQuery for skipped replies, everything for the
# pooler's own query. Any other reply is forwarded untouched.
_WATCHED: dict[int, bytes] = {**_TERMINAL, T_SKIPZ: b"Z", T_INJ_QUERY: bytes(range(256)),
                               T_INJ_DESCRIBE: b"tTn"}
# The replies whose bodies the ReplyTracker reads while a tag of this kind is at the head
# (besides ErrorResponse): the scanner holds them until whole.
_READ: dict[int, bytes] = {T_INJ_DESCRIBE: b"tTn"}

# How many accepted statement texts a pool remembers for answering clients without a server.
KNOWN_LIMIT = 10000

# Raw CopyData pieces (0), CopyData, CopyDone, CopyFail and Flush: nothing to tag.
NO_REPLY = frozenset((0, ord("d"), ord("c"), ord("f"), ord("H")))

_HEADER = struct.Struct("!ci").pack  # type byte and length of a message
PARSE_COMPLETE = message(b"1")
CLOSE_COMPLETE = message(b"3")
_FAILING_QUERY = b"pgusher: this statement stands in for an error\0"
_FAILING_NAME = b"pgusher_error"
FAILING_PARSE = message(b"P", _FAILING_NAME + b"\0" + _FAILING_QUERY + b"\0\0")
_FLUSH = message(b"H")
_DUPLICATE_NAME = b"pgusher_duplicate"
_CLOSE_DUPLICATE = message(b"C", b"S" + _DUPLICATE_NAME + b"\0")
_PROBE_NAME = b"pgusher_parse"
_CLOSE_PROBE = message(b"C", b"S" + _PROBE_NAME + b"\0")
_FAILED = ord("E")  # ReadyForQuery status of a failed transaction block
_NO_DATA = message(b"n")
PLAN_CHANGED_TEXT = "cached plan must not change result type"

# A query that may change the catalog (see schema_changed); more is harmless.
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


class Tag:
    """The reply that ends one message sent to a server (see the module notes).

    Tags of kind T_BIND, T_DESCRIBE, T_EXECUTE, T_SYNC and T_CLOSE never change once made, so
    one object serves every message of its kind (per statement, when it has a key).
    """

    __slots__ = ("count", "data", "holds", "key", "kind", "name", "owner", "read", "restores",
                 "seg", "undo", "watch")

    def __init__(self, kind: int, key: str | None = None) -> None:
        self.kind = kind
        self.key = key
        self.watch = _WATCHED.get(kind, b"")
        self.read = _READ.get(kind, b"")
        self.holds = False  # what the client sent after it waits for its reply
        self.seg = -1  # for a message that changed the client's names: the Syncs before it
        # A query's: the unnamed statement's effect it dropped, back if the query is skipped.
        self.restores: _Effect | None = None
        self.count = 0
        self.data = b""
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


class _SchemaClock:
    """Counts the schema changes this process has seen (see :func:`schema_changed`)."""

    __slots__ = ("generation",)

    def __init__(self) -> None:
        self.generation = 0


_SCHEMA = _SchemaClock()


def schema_changed() -> None:
    """The catalog may have changed (DDL went through, or a server said a plan changed).

    A client's Parse means a fresh analysis on a direct connection; from now on it maps to a
    new server-side statement rather than one analysed before the change. Statements parsed
    before keep theirs, and with it what PostgreSQL does to them (fixed parameter types, an
    error if the result type changed).
    """
    _SCHEMA.generation += 1


def schema_generation() -> int:
    return _SCHEMA.generation


def statement_key(query: bytes, types: bytes) -> str:
    """The server-side name of a client's statement parsed now."""
    digest = hashlib.blake2b(query + b"\0" + types, digest_size=10).hexdigest()
    generation = _SCHEMA.generation
    return f"pgusher_{digest}_{generation}" if generation else "pgusher_" + digest


class KnownStatements(set[str]):
    """What a pool knows of its statement keys: those some server accepted (the set), and
    what the first server to parse each of them said about it.

    ``params`` holds a key's ParameterDescription body (its parameter types, as a Parse carries
    them), ``shapes`` its result row (:func:`row_shape`; b"" for NoData), ``stale`` the keys
    whose result type changed since: on a direct connection their statements fail with 0A000.
    Every later Parse of a key on another server pins those parameter types and checks that
    result row, so a key means one statement on every server of the pool.
    """

    __slots__ = ("params", "shapes", "stale")

    def __init__(self) -> None:
        super().__init__()
        self.params: dict[str, bytes] = {}
        self.shapes: dict[str, bytes] = {}
        self.stale: set[str] = set()

    def clear(self) -> None:
        super().clear()
        self.params.clear()
        self.shapes.clear()

    def mark_stale(self, key: str) -> None:
        if len(self.stale) >= KNOWN_LIMIT:
            self.stale.clear()
        self.stale.add(key)


def row_shape(body: bytes) -> bytes:
    """A RowDescription body reduced to what makes a result type: names, types, typmods.

    The table OID and column number (a re-created table) and the format do not count, as
    for PostgreSQL's own "cached plan must not change result type" check.
    """
    count = int.from_bytes(body[:2], "big")
    pos = 2
    out = [body[:2]]
    for _ in range(count):
        end = body.index(0, pos)
        out.append(body[pos:end + 1])  # name and its NUL
        out.append(body[end + 7:end + 11])  # type OID
        out.append(body[end + 13:end + 17])  # type modifier
        pos = end + 19
    return b"".join(out)


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


Undo = Callable[[], None]


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


class _Effect:
    """What executing a statement does to the client's names: ``run`` does it and returns
    what takes it back (None: the name it deallocates does not exist)."""

    __slots__ = ("run", "shown")

    def __init__(self, run: Callable[[], Undo | None], name: bytes = b"") -> None:
        self.run = run
        self.shown = name.decode("utf-8", "replace")


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


class LinkState:
    """What the pooler knows about one server connection's statements and pending replies."""

    __slots__ = ("deferred", "errors", "held", "known", "limit", "lost_queries", "name_seg",
                 "needs_close", "needs_reset", "parsing", "portals", "release", "segment",
                 "skipping", "statements", "status", "tags", "unnamed", "untagged_z")

    def __init__(self, limit: int, known: KnownStatements | None = None) -> None:
        self.limit = limit
        # Statement keys some server of the pool has accepted (shared by the pool's links).
        self.known = known if known is not None else KnownStatements()
        self.statements: OrderedDict[str, None] = OrderedDict()  # LRU, oldest first
        self.needs_close: set[str] = set()  # on the server but unusable (plan changed)
        self.tags: deque[Tag] = deque()
        self.untagged_z = 0      # ReadyForQuery still due for untagged work
        self.skipping = False    # the server is skipping messages until Sync
        self.lost_queries = 0    # queries the server skipped (their ReadyForQuery never comes)
        self.needs_reset = False  # prepared-statement state is uncertain: reset before reuse
        self.errors = 0  # errors seen in tagged replies (SET effects are kept only without)
        # Client messages waiting for the check of a statement parsed again (one piece per
        # check, in order), and what the checks let go: the connection writes it to the server.
        self.held: deque[bytes] = deque()
        self.release = b""
        self.status = 73  # the last ReadyForQuery's status (the server stream keeps it)
        # Syncs sent, and for each statement whose Parse is not answered yet, how many had
        # been sent before it (see Translator._settled).
        self.segment = 0
        self.parsing: dict[str, int] = {}
        # The oldest segment that may hold a change to the client's names not answered yet
        # (-1: none), and the client messages whose meaning waits for those answers: the
        # connection translates them once no reply is pending.
        self.name_seg = -1
        self.deferred: list[tuple[int, bytes]] = []
        # What running the unnamed statement, or a portal, does to the client's names
        # (an SQL DEALLOCATE parsed with the extended protocol): done at its Execute.
        self.unnamed: _Effect | None = None
        self.portals: dict[bytes, _Effect] = {}

    def forget_all(self) -> None:
        self.statements.clear()
        self.needs_close.clear()
        self.parsing.clear()
        self.unnamed = None
        self.portals.clear()

    def doubt_all(self) -> None:
        """A DEALLOCATE ALL or DISCARD ALL is on its way: whether the server will still have
        its statements is known only later, so each is closed before it is parsed again."""
        self.needs_close.update(self.statements)
        self.statements.clear()
        self.parsing.clear()

    def take_deferred(self) -> list[tuple[int, bytes]]:
        """The client messages that waited, once every reply is in (else nothing)."""
        if self.tags or not self.deferred:
            return []
        deferred, self.deferred = self.deferred, []
        return deferred

    def parse_done(self, tag: Tag) -> None:
        """A Parse of ``tag.key`` was answered, or skipped."""
        key = tag.key
        if key is not None and self.parsing.get(key) == tag.count:
            del self.parsing[key]


class Translator:
    """Rewrites one batch of whole client messages for a given server link."""

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
        self.out.append(_FLUSH)  # the server answers now, not at the client's Sync
        self.holds.append(len(self.out))

        def release() -> None:  # skipped or failed: what waited goes to the server as it is
            if link.held:
                link.release += link.held.popleft()

        tag.undo = release

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
        deferred = link.deferred
        for kind, msg in messages:
            if deferred:
                deferred.append((kind, msg))
                continue
            if link.name_seg >= 0 and _names_matter(kind & 255, msg) and self._unsettled():
                # What this message means depends on replies still to come: it waits.
                out.append(_FLUSH)  # the server answers what it has now
                deferred.append((kind, msg))
                continue
            if kind in NO_REPLY:
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
                effect = link.portals.pop(msg[5:msg.find(0, 5)], None) if link.portals else None
                if effect is None:
                    self._push(_EXECUTE_TAG)
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
                self._push(_SYNC_TAG)
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
                    link.unnamed = _Effect(partial(_free, statements, wire), wire)
                    msg = message(b"P", b"\0" + _DEALLOCATE_STAND_IN + b"\0" + types)
                elif drops_all_statements(query):
                    link.unnamed = _Effect(partial(_clear_all, statements, self.sql, link, True))
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

    def _bind(self, msg: bytes) -> None:
        portal_end = msg.find(0, 5)
        name_end = msg.find(0, portal_end + 1) if portal_end >= 0 else -1
        if name_end < 0:
            raise ProtocolError(INVALID_STRING)
        link = self.link
        if link.portals or link.unnamed is not None:
            # The portal runs what the statement does to the client's names, if anything.
            portal = msg[5:portal_end]
            if name_end == portal_end + 1 and link.unnamed is not None:
                link.portals[portal] = link.unnamed
            else:
                link.portals.pop(portal, None)
        if name_end == portal_end + 1 or not link.limit:
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
        self._push(_CLOSE_TAG)
        self.out.append(msg)


# The messages whose bodies the Translator reads; what tags one that goes as it came.
_READ_BODIES: dict[int, Callable[[Translator, bytes], None]] = {
    80: Translator._parse, 66: Translator._bind, 68: Translator._describe,
    67: Translator._close,
}
_PLAIN_TAGS = {66: _BIND_TAG, 68: _DESCRIBE_TAG, 67: _CLOSE_TAG}
