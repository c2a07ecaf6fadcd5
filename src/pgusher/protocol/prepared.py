"""Named prepared statements across pooled server connections (sans-IO).

In transaction and statement mode a client's statements must survive being moved from one
server connection to another. The strategy:

* A client's named Parse is registered under the client's name, and sent to the server under a
  pooler-owned name derived from the query text and parameter types (statement_key), so
  identical statements from many clients share one server-side statement. The Translator
  (translator.py) rewrites the client's messages to match.
* A shared statement must mean what the client's Parse meant on a direct connection: its key
  names the schema generation it was parsed in, the first Parse of a key in a pool is
  described to learn its parameter types and result row, and a Parse of it on another server
  pins those types and is checked against that row before the client's next messages go
  (see KnownStatements, and replies.py).

A Statement carries the reply tags of its Bind and Describe, and a Parse's tag names the
client's statements it registers, so the tags (Tag and its kinds) are defined here with the
statements; link.py holds the FIFO they wait in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from ..errors import ProtocolError
from .messages import message
from .opaque import opaque_reason
from .session import inspect_text, might_affect_session

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

PARSE_COMPLETE = message(b"1")
CLOSE_COMPLETE = message(b"3")
# The pooler's Parse that cannot succeed (T_FAIL): its error stands for one the pooler raises.
_FAILING_QUERY = b"pgusher: this statement stands in for an error\0"
FAILING_NAME = b"pgusher_error"
FAILING_PARSE = message(b"P", FAILING_NAME + b"\0" + _FAILING_QUERY + b"\0\0")
PLAN_CHANGED_TEXT = "cached plan must not change result type"


class Tag:
    """The reply that ends one message sent to a server (see link.py).

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
        self.restores: Effect | None = None
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
        # A text that is an SQL-level PREPARE, EXECUTE or DEALLOCATE: (verb, SQL name, rest,
        # head) as session.sql_prepared reads it, resolved at each use.
        self.sql_verb: tuple[str, str, str, str] | None = None
        # What executing it does to the session: every Bind of it says so again.
        self.effects = inspect_text(query) if might_affect_session(query) else []
        self.wire_name = key.encode() + b"\0"  # as Parse, Bind and Describe carry it
        self.parse_body = self.wire_name + query + b"\0" + types
        self.describe = message(b"D", b"S" + self.wire_name)
        self.bind_tag = Tag(T_BIND, key)
        self.describe_tag = Tag(T_DESCRIBE, key)


BIND_TAG = Tag(T_BIND)
DESCRIBE_TAG = Tag(T_DESCRIBE)
EXECUTE_TAG = Tag(T_EXECUTE)
SYNC_TAG = Tag(T_SYNC)
CLOSE_TAG = Tag(T_CLOSE)


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


Undo = Callable[[], None]


class Effect:
    """What executing a statement does to the client's names: ``run`` does it and returns
    what takes it back (None: the name it deallocates does not exist)."""

    __slots__ = ("run", "shown")

    def __init__(self, run: Callable[[], Undo | None], name: bytes = b"") -> None:
        self.run = run
        self.shown = name.decode("utf-8", "replace")
