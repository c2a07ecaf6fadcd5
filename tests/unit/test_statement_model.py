"""Property test: through the Translator and the server stream, a client sees exactly what a
direct connection would show it.

A small model of a PostgreSQL server answers the extended and simple query protocols: named
and unnamed statements and portals, transaction blocks, an error that makes it skip to Sync
(and aborted transactions), notices, and a schema change (a column added to the table some
statements read, which fixes their result row, as PostgreSQL's plan cache does). One
client's random batches go to one model server directly, and through the pooler's rewriting
to two model servers of a pool, moving between them whenever a real pooler could release the
server. COPY runs in both protocols: COPY FROM STDIN with its data ended by CopyDone or
CopyFail, COPY TO STDOUT, and stray copy messages outside COPY, which PostgreSQL ignores.
The client may pipeline (send batches before reading replies), and the pooled servers'
replies are cut into random chunks. The pooler's own Parses (a statement moved to
the other server, or evicted by a small max_prepared_statements), Closes and checks are
answered by the model like any message. The client must receive the same messages (errors
compared by SQLSTATE), and the link must end with no tags left.

Not modelled, since no pooler in transaction mode can give them: the unnamed statement
kept from one transaction to the next, and a named statement whose text deallocates the
client's own names. Nor a COPY FROM STDIN left without its data (the client would wait for a
reply that never comes, with a server or without one): a COPY FROM STDIN statement can be
bound only once. PGUSHER_MODEL_EXAMPLES sets the number of examples (300).
"""

from __future__ import annotations

import os
import random
import struct
from dataclasses import dataclass, field
from itertools import chain

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pgusher.net.client_link import SERVERLESS_FIRST
from pgusher.protocol import messages as m
from pgusher.protocol.framing import ServerStream
from pgusher.protocol.link import LinkState
from pgusher.protocol.prepared import KnownStatements, Statement
from pgusher.protocol.session import might_affect_session
from pgusher.protocol.shortcuts import answer_without_server, untagged_syncs
from pgusher.protocol.translator import Translator

_HEADER = struct.Struct("!ci")
_QUIET = b"SELECT"  # a statement of the pooler's own: no rows, nothing to fail on


# ---- the model server

@dataclass
class Catalog:
    """What the table "t" looks like: ``columns`` columns; each ALTER adds one."""

    columns: int = 1


@dataclass
class Stmt:
    text: bytes
    shape: int | None  # columns of its result row; None: no rows (NoData)
    params: bytes
    bound: bool = False


@dataclass
class Portal:
    stmt: Stmt
    done: bool = False


def _shape(text: bytes, catalog: Catalog) -> int | None:
    """The result row a text has now; None for NoData."""
    if text == b"insert" or text.lower().startswith((b"deallocate", b"copy")):
        return None
    if text == b"select t":
        return catalog.columns
    if text == _QUIET:
        return 0
    return 1


def _row(columns: int) -> bytes:
    return m.row_description([(f"c{i}", 23) for i in range(columns)])


class PgError(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@dataclass
class ModelServer:
    """A PostgreSQL backend as far as these messages go (see PostgresMain in postgres.c)."""

    catalog: Catalog
    statements: dict[bytes, Stmt] = field(default_factory=dict)
    portals: dict[bytes, Portal] = field(default_factory=dict)
    block: str = ""  # "", "T" in a transaction block, "E" in a failed one
    skipping: bool = False
    pending: bytes = b""
    copy_in: str = ""  # "Q" or "E": in COPY FROM STDIN, started by a Query or an Execute

    def feed(self, data: bytes) -> bytes:
        data = self.pending + data
        out: list[bytes] = []
        pos = 0
        while len(data) - pos >= 5:
            kind, length = _HEADER.unpack_from(data, pos)
            end = pos + 1 + length
            if end > len(data):
                break
            self.message(kind, data[pos + 5:end], out)
            pos = end
        self.pending = data[pos:]
        return b"".join(out)

    def status(self) -> bytes:
        return self.block.encode() if self.block else b"I"

    def message(self, kind: bytes, body: bytes, out: list[bytes]) -> None:
        if self.copy_in:
            self.copying(kind, out)
            return
        if kind in (b"d", b"c", b"f"):
            return  # copy messages outside COPY are ignored
        if kind == b"S":
            self.skipping = False
            if not self.block:
                self.portals.clear()  # the implicit transaction ends
            out.append(m.ready_for_query(self.status()))
            return
        if kind == b"H" or self.skipping:
            return  # Flush; or anything but Sync while skipping (a Query too)
        if kind == b"Q":
            self.query(body.rstrip(b"\0"), out)
            return
        try:
            self.extended(kind, body, out)
        except PgError as exc:
            out.append(m.error_response("ERROR", exc.code, "model error"))
            self.skipping = True
            if self.block:
                self.block = "E"

    def extended(self, kind: bytes, body: bytes, out: list[bytes]) -> None:
        aborted = self.block == "E"
        if kind == b"P":
            name, rest = body.split(b"\0", 1)
            text, types = rest.split(b"\0", 1)
            if text in (b"bad", b"") or text.startswith(b"pgusher:"):
                raise PgError("42601")  # raw parsing comes first
            if aborted:
                raise PgError("25P02")
            if text.startswith(b"SELECT pg_catalog.pgusher"):
                raise PgError("42883")  # a function that does not exist
            if name and name in self.statements:
                raise PgError("42P05")
            self.statements[name] = Stmt(text, _shape(text, self.catalog), types)
            out.append(m.message(b"1"))
        elif kind == b"B":
            portal, rest = body.split(b"\0", 1)
            name = rest.split(b"\0", 1)[0]
            stmt = self.statements.get(name)
            if stmt is None:
                raise PgError("26000")
            if aborted:
                raise PgError("25P02")
            self.revalidate(stmt)
            if stmt.text == b"copy in":
                # Bound once: run again it would wait for data the client never sends.
                if stmt.bound:
                    raise PgError("55000")
                stmt.bound = True
            if portal and portal in self.portals:
                raise PgError("42P03")
            self.portals[portal] = Portal(stmt)
            out.append(m.message(b"2"))
        elif kind == b"D":
            what, name = body[:1], body[1:-1]
            if what == b"S":
                stmt = self.statements.get(name)
                if stmt is None:
                    raise PgError("26000")
                if stmt.shape is not None:
                    if aborted:
                        raise PgError("25P02")
                    self.revalidate(stmt)
                out.append(m.message(b"t", stmt.params))
            else:
                found = self.portals.get(name)
                if found is None:
                    raise PgError("34000")
                if aborted and found.stmt.shape is not None:
                    raise PgError("25P02")
                stmt = found.stmt
            out.append(m.message(b"n") if stmt.shape is None else _row(stmt.shape))
        elif kind == b"E":
            portal = body.split(b"\0", 1)[0]
            found = self.portals.get(portal)
            if found is None:
                raise PgError("34000")
            if aborted:
                raise PgError("25P02")
            text = found.stmt.text
            if text == b"boom":
                raise PgError("22012")
            if text == b"notice":
                out.append(m.notice_response("a notice"))
                out.append(m.parameter_status("application_name", "model"))
            if text.startswith(b"copy") and not found.done:
                out.extend(self.copy(text, "E"))
            elif text.lower().startswith(b"deallocate") and not found.done:
                out.extend(self.simple(text.lower()))
            elif found.done:
                out.append(m.command_complete("SELECT 0"))
            elif found.stmt.shape is None:
                out.append(m.command_complete("INSERT 0 1"))
            else:
                out.append(m.data_row(["1"] * found.stmt.shape))
                out.append(m.command_complete("SELECT 1"))
            found.done = True
        elif kind == b"C":
            what, name = body[:1], body[1:-1]
            if what == b"S":
                self.statements.pop(name, None)
            else:
                self.portals.pop(name, None)
            out.append(m.message(b"3"))

    def copying(self, kind: bytes, out: list[bytes]) -> None:
        """A message in COPY FROM STDIN: data, its end, or its failure (Flush and Sync are
        ignored; the client's units never send anything else)."""
        if kind in (b"d", b"H", b"S"):
            return
        assert kind in (b"c", b"f"), f"{kind!r} during COPY FROM STDIN"
        started, self.copy_in = self.copy_in, ""
        if kind == b"c":
            out.append(m.command_complete("COPY 1"))
        else:
            out.append(m.error_response("ERROR", "57014", "COPY from stdin failed"))
            if self.block:
                self.block = "E"
            if started == "E":
                self.skipping = True
        if started == "Q":
            self.end_query(out)

    def copy(self, low: bytes, started: str) -> list[bytes]:
        if low == b"copy in":
            self.copy_in = started
            return [m.message(b"G", b"\0\0\0")]
        return [m.message(b"H", b"\0\0\0"), m.message(b"d", b"1\n"), m.message(b"d", b"2\n"),
                m.message(b"c"), m.command_complete("COPY 2")]

    def revalidate(self, stmt: Stmt) -> None:
        """A statement's result row is fixed when it is parsed."""
        if stmt.shape is not None and _shape(stmt.text, self.catalog) != stmt.shape:
            raise PgError("0A000")

    def query(self, text: bytes, out: list[bytes]) -> None:
        self.statements.pop(b"", None)  # a simple query drops the unnamed statement
        low = text.lower()
        try:
            if self.block == "E" and low not in (b"commit", b"rollback"):
                raise PgError("25P02")
            out.extend(self.simple(low))
        except PgError as exc:
            out.append(m.error_response("ERROR", exc.code, "model error"))
            if self.block:
                self.block = "E"
        if not self.copy_in:  # else its end ends the query
            self.end_query(out)

    def end_query(self, out: list[bytes]) -> None:
        if not self.block:
            self.portals.clear()
        out.append(m.ready_for_query(self.status()))

    def simple(self, low: bytes) -> list[bytes]:
        if low.startswith(b"copy"):
            return self.copy(low, "Q")
        if low == b"begin":
            self.block = "T"
            return [m.command_complete("BEGIN")]
        if low in (b"commit", b"rollback"):
            failed = self.block == "E"
            self.block = ""
            self.portals.clear()
            return [m.command_complete("ROLLBACK" if failed or low == b"rollback" else "COMMIT")]
        if low == b"select 1":
            return [_row(1), m.data_row(["1"]), m.command_complete("SELECT 1")]
        if low == b"boom":
            raise PgError("22012")
        if low == b"notice":
            return [m.notice_response("a notice"), m.command_complete("DO")]
        if low == b"alter":
            self.catalog.columns += 1
            return [m.command_complete("ALTER TABLE")]
        if low == b"deallocate all":
            self.statements.clear()
            return [m.command_complete("DEALLOCATE ALL")]
        if low.startswith(b"deallocate "):
            name = low.split()[-1]
            if self.statements.pop(name, None) is None:
                raise PgError("26000")
            return [m.command_complete("DEALLOCATE")]
        if low.startswith(b"prepare "):
            name = low.split()[1]
            if name in self.statements:
                raise PgError("42P05")
            self.statements[name] = Stmt(_QUIET, 0, b"\0\0")
            return [m.command_complete("PREPARE")]
        raise AssertionError(f"the model does not know {low!r}")


# ---- the client's messages

NAMES = [b"", b"a", b"b", b"c"]
TEXTS = [b"select 1", b"select t", b"select t", b"insert", b"boom", b"notice", b"bad"]
# SQL DEALLOCATE as the unnamed statement, parsed, bound and run at once (psycopg's pipeline);
# a named statement whose text is a DEALLOCATE of the client's names is not modelled (it
# cannot be shared by text).
DEALLOCATES = [b"deallocate a", b"deallocate prepare b", b"deallocate all"]
PORTALS = [b"", b"p"]
QUERIES = [b"select 1", b"begin", b"commit", b"rollback", b"boom", b"notice", b"alter", b"alter",
           b"deallocate a", b"deallocate prepare b", b"deallocate all"]


def _msg(kind: bytes, body: bytes) -> tuple[int, bytes]:
    return kind[0], m.message(kind, body)


def _parse(name: bytes, text: bytes) -> tuple[int, bytes]:
    return _msg(b"P", name + b"\0" + text + b"\0\0\0")


def _bind(portal: bytes, name: bytes) -> tuple[int, bytes]:
    return _msg(b"B", portal + b"\0" + name + b"\0\0\0\0\0\0\0")


def _execute(portal: bytes) -> tuple[int, bytes]:
    return _msg(b"E", portal + b"\0\0\0\0\0")


def _describe(what: bytes, name: bytes) -> tuple[int, bytes]:
    return _msg(b"D", what + name + b"\0")


COPY_ENDS = [_msg(b"c", b""), _msg(b"f", b"no more\0")]


names = st.sampled_from(NAMES)
portals = st.sampled_from(PORTALS)
single = st.one_of(
    st.builds(_parse, names, st.sampled_from(TEXTS)),
    st.builds(_bind, portals, st.sampled_from([*NAMES, b"zz"])),
    st.builds(lambda n: _describe(b"S", n), st.sampled_from([*NAMES, b"zz"])),
    st.builds(lambda p: _describe(b"P", p), portals),
    st.builds(_execute, portals),
    st.builds(lambda n: _msg(b"C", b"S" + n + b"\0"), names),
    st.builds(lambda p: _msg(b"C", b"P" + p + b"\0"), portals),
    st.just(_msg(b"S", b"")),
    st.just(_msg(b"H", b"")),
    st.sampled_from([_msg(b"d", b"x\n"), _msg(b"c", b""), _msg(b"f", b"stray\0")]),
    st.builds(lambda q: _msg(b"Q", q + b"\0"), st.sampled_from(QUERIES)),
)
# What drivers send: prepare and run, run a prepared statement (described or not), sync.
units = st.one_of(
    st.builds(lambda n, t, p: [_parse(n, t), _bind(p, n), _describe(b"P", p), _execute(p)],
              names, st.sampled_from(TEXTS), portals),
    st.builds(lambda n, t: [_parse(n, t), _describe(b"S", n), _msg(b"S", b"")],
              names, st.sampled_from(TEXTS)),
    st.builds(lambda n, p: [_bind(p, n), _execute(p), _msg(b"S", b"")], names, portals),
    st.builds(lambda n: [_describe(b"S", n), _bind(b"", n), _execute(b"")], names),
    st.builds(lambda t: [_parse(b"", t), _bind(b"", b""), _describe(b"P", b""), _execute(b"")],
              st.sampled_from(DEALLOCATES)),
    # COPY: from the client, ended by CopyDone or CopyFail, and to it; by Query and Execute.
    st.builds(lambda rows, end: [_msg(b"Q", b"copy in\0"), *rows, end],
              st.lists(st.just(_msg(b"d", b"1\n")), max_size=2), st.sampled_from(COPY_ENDS)),
    st.just([_msg(b"Q", b"copy out\0")]),
    st.builds(lambda rows, end, flush: [_parse(b"", b"copy in"), _bind(b"", b""),
                                        _execute(b""), *flush, *rows, end, _msg(b"S", b"")],
              st.lists(st.just(_msg(b"d", b"1\n")), max_size=2), st.sampled_from(COPY_ENDS),
              st.sampled_from([[], [_msg(b"H", b"")]])),
    st.builds(lambda p: [_parse(b"", b"copy out"), _bind(b"", b""), _describe(b"P", b""),
                         _execute(b""), _msg(b"S", b"")], portals),
    # A column added under statements that read the table, and one of them used.
    st.builds(lambda n: [_msg(b"Q", b"alter\0"), _bind(b"", n), _execute(b""), _msg(b"S", b"")],
              names),
)
messages = st.one_of(single.map(lambda one: [one]), units)
# A batch, whether it may go to another server, whether the client waits for its replies.
batches = st.lists(
    st.tuples(st.lists(messages, min_size=1, max_size=5).map(lambda parts: [*chain(*parts)]),
              st.booleans(), st.booleans()),
    min_size=1, max_size=8)


# ---- running it

def parsed(data: bytes) -> list[tuple[bytes, bytes]]:
    """Messages as (type, body); an error by its SQLSTATE alone (the pooler words its own)."""
    out = []
    pos = 0
    while pos < len(data):
        kind, length = _HEADER.unpack_from(data, pos)
        body = data[pos + 5:pos + 1 + length]
        if kind == b"E":
            body = m.parse_error_fields(body)["C"].encode()
        out.append((kind, body))
        pos += 1 + length
    return out


Batch = tuple[list[tuple[int, bytes]], bool, bool]


class Pooled:
    """The client's side of the pooler: a pool of two model servers, one linked at a time."""

    def __init__(self, rng: random.Random, limit: int) -> None:
        self.rng = rng
        catalog = Catalog()
        self.known = KnownStatements()
        self.servers = [ModelServer(catalog) for _ in range(2)]
        self.links = [LinkState(limit, self.known) for _ in range(2)]
        self.streams = []
        for link in self.links:
            stream = ServerStream(lambda *a: None)
            stream.track(link)
            self.streams.append(stream)
        self.statements: dict[bytes, Statement] = {}
        self.current: int | None = None
        self.last = 0
        self.seen = b""
        self.unsynced = False
        self.backlog = b""  # replies the client has not read yet (it pipelines)

    def release(self) -> bool:
        """Give the server back if ClientConn.on_server_ready would (and reset it if due)."""
        if self.current is None:
            return True
        link = self.links[self.current]
        stream = self.streams[self.current]
        if (self.backlog or stream.status != ord("I") or self.unsynced
                or not stream.at_boundary or link.tags or link.held or link.untagged_z
                or link.skipping or link.deferred):
            return False
        server = self.servers[self.current]
        server.statements.pop(b"", None)  # (see run)
        if link.needs_reset:  # the pool's reset: DEALLOCATE ALL
            server.statements.clear()
            link.forget_all()
            link.needs_reset = False
        self.current = None
        return True

    def send(self, batch: list[tuple[int, bytes]], move: bool, wait: bool) -> None:
        for kind, _ in batch:
            if kind in b"PBEDC":
                self.unsynced = True
            elif kind in b"SQ":
                self.unsynced = False
        if self.current is None:
            if batch[0][0] in SERVERLESS_FIRST:  # no server: what the pooler can, it answers
                reply = answer_without_server(batch, self.statements, self.known)
                if reply is not None:
                    self.seen += reply
                    return
            self.current = self.last = self.rng.randrange(2) if move else self.last
        self.translate(batch)
        if wait:
            self.pump()

    def translate(self, batch: list[tuple[int, bytes]]) -> None:
        """ClientConn._send_translated: the fast paths, or the Translator."""
        assert self.current is not None
        link = self.links[self.current]
        data = None
        if not link.tags and not link.skipping:
            if (len(batch) == 1 and batch[0][0] == 81
                    and not might_affect_session(batch[0][1][5:])):
                link.untagged_z += 1
                data = batch[0][1]
            elif syncs := untagged_syncs(batch, link):
                link.untagged_z += syncs
                data = b"".join(msg for _, msg in batch)
        if data is None:
            translator = Translator(link, self.statements)
            data = translator.feed(batch)
            self.seen += translator.direct
        self.backlog += self.servers[self.current].feed(data)

    def pump(self) -> None:
        """Feed the server's replies to the stream in random chunks, as ServerConn does: send
        what a check lets go, translate what waited for replies."""
        if self.current is None:
            return
        stream = self.streams[self.current]
        link = self.links[self.current]
        while self.backlog:
            cut = self.rng.randint(1, min(len(self.backlog), 40))
            chunk, self.backlog = self.backlog[:cut], self.backlog[cut:]
            self.seen += stream.feed(chunk)
            if link.release:
                released, link.release = link.release, b""
                self.backlog += self.servers[self.current].feed(released)
            waiting = link.take_deferred()
            if waiting:
                self.translate(waiting)


def run(batches_: list[Batch], seed: int, limit: int) -> tuple[bytes, Pooled]:
    """The direct connection's replies, and the pooled client after the same batches.

    A client of a transaction pooler cannot use the unnamed statement across transactions
    (the next may run on another server): both sides forget it where the pooler releases.
    """
    direct = ModelServer(Catalog())
    shown = b""
    pooled = Pooled(random.Random(seed), limit)
    for batch, move, wait in batches_:
        if pooled.release():
            direct.statements.pop(b"", None)
        shown += direct.feed(b"".join(msg for _, msg in batch))
        pooled.send(batch, move, wait)
    pooled.pump()
    return shown, pooled


@settings(max_examples=int(os.environ.get("PGUSHER_MODEL_EXAMPLES", "300")), deadline=None,
          database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(batches=batches, seed=st.integers(0, 2**32), limit=st.sampled_from([2, 3, 10]))
# Found by this test: a Bind to a statement gone stale in a failed transaction gets 25P02.
@example(batches=[
    ([(80, b"P\x00\x00\x00\x11a\x00select t\x00\x00\x00"), (81, b"Q\x00\x00\x00\nalter\x00"),
      (66, b"B\x00\x00\x00\r\x00a\x00\x00\x00\x00\x00\x00\x00"),
      (69, b"E\x00\x00\x00\t\x00\x00\x00\x00\x00"), (83, b"S\x00\x00\x00\x04")], False, False),
    ([(81, b"Q\x00\x00\x00\nbegin\x00"), (68, b"D\x00\x00\x00\x06S\x00"),
      (80, b"P\x00\x00\x00\x10\x00select 1\x00\x00\x00"), (68, b"D\x00\x00\x00\x06S\x00"),
      (83, b"S\x00\x00\x00\x04"), (66, b"B\x00\x00\x00\r\x00a\x00\x00\x00\x00\x00\x00\x00")],
     False, False)], seed=0, limit=2)
def test_client_sees_what_a_direct_connection_shows(
        batches: list[Batch], seed: int, limit: int) -> None:
    batches = [*batches, ([_msg(b"S", b"")], False, True)]  # every run ends at a Sync
    direct, pooled = run(batches, seed, limit)
    assert parsed(pooled.seen) == parsed(direct)
    if pooled.current is not None:
        link = pooled.links[pooled.current]
        assert not link.tags and not link.held and not link.release
        assert pooled.streams[pooled.current].at_boundary
