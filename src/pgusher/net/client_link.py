"""A client linked to a server: sending its work, following its session, releasing the server.

Strategy: everything between a server being given to a client and taken back lives here, as
the part of :class:`ClientConn` that knows about a link. On link the client's settings go
first as a diff (server_conn.attach). Each batch is sent as it came when nothing in it needs
rewriting, else through the :class:`Translator` (named statements, SQL-level PREPARE). What
the batch does to the session is noted, and settled when its transaction ends: kept after a
commit, dropped after an error or ROLLBACK. The server is released at the first clean
boundary (status idle, nothing owed, no unsynced extended work, both streams between
messages); after a transaction whose effects the SQL does not show (protocol/opaque.py) the
server's session is read back first (protocol/capture.py) and the client's next messages wait
for that answer.
"""

from __future__ import annotations

import asyncio
from time import monotonic
from typing import TYPE_CHECKING

from ..errors import ClientFatal
from ..log import log
from ..metrics.counters import Counters
from ..pooling.internal import ROLLBACK as POOLER_ROLLBACK
from ..pooling.states import SESSION, STATEMENT, TESTED
from ..protocol.capture import capture_query, merge_named, parse_rows
from ..protocol.capture import session_sets as capture_sets
from ..protocol.client_stream import ClientStream
from ..protocol.opaque import named_settings
from ..protocol.prepared import SqlStatement, Statement
from ..protocol.session import (
    DIRTY,
    DISCARD_ALL,
    OPAQUE,
    RESET,
    RESET_ALL,
    ROLLBACK,
    SET,
    might_affect_session,
)
from ..protocol.shortcuts import answer_without_server, untagged_syncs
from ..protocol.translator import Translator

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..app import Application
    from ..pooling.pool import Pool
    from .client_conn import ClientConn
    from .server_conn import ServerConn

# Message types that can start a batch the pooler may answer itself: Parse, Close, Sync, and
# those no server answers (Flush, CopyData, CopyDone, CopyFail, 0 for a piece of CopyData).
SERVERLESS_FIRST = frozenset(b"PCSHdcf\0")
PAUSE_WAIT = 1  # reading paused: waiting for a server
PAUSE_PEER = 2  # reading paused: the server's side cannot take more
_CUSTOM_LIMIT = 64  # custom setting names read back per client
_IDENTITY_SETS = ("session_authorization", "role")


class ClientLink:
    """The linked part of a client connection; the attributes are :class:`ClientConn`'s."""

    if not TYPE_CHECKING:
        __slots__ = ()  # the slots are ClientConn's
    else:
        app: Application
        transport: asyncio.Transport
        closed: bool
        server: ServerConn | None
        pool: Pool | None
        stream: ClientStream
        translating: bool
        pending: list[bytes]
        pending_msgs: list[tuple[int, bytes]]
        statements: dict[bytes, Statement]
        sql_statements: dict[str, SqlStatement]
        namespace: str
        params: dict[str, str]
        session_sets: dict[str, str]
        session_defaults: dict[str, str]
        pending_effects: list[tuple[str, str, str]]
        effects_mark: int
        effects_failed: bool
        saw_rollback: bool
        opaque: int
        settling: ServerConn | None
        custom_names: set[str]
        outstanding: int
        leaving: bool
        waiting: bool
        stats: Counters
        state_since: float
        busy_since: float
        xact_since: float
        xact_start: float
        _paused: int
        conn: ClientConn  # ClientLogin's: this connection, typed as what it always is

        prefix: Callable[[], str]
        fatal: Callable[..., None]
        close: Callable[..., None]
        _resume: Callable[[int], None]

    def _send_translated(self, server: ServerConn, msgs: list[tuple[int, bytes]],
                         prefix: bytes = b"") -> None:
        link = server.link
        assert link is not None and server.transport is not None
        if len(msgs) == 1 and msgs[0][0] == 0 and not prefix:
            server.transport.write(msgs[0][1])  # a piece of a long message or CopyData
            return
        if msgs and not link.tags and not link.skipping:
            kind, msg = msgs[0]
            if len(msgs) == 1 and kind == 81:
                if not might_affect_session(msg[5:]):
                    # The simple-protocol common case: one plain query, nothing to rewrite
                    # or tag.
                    link.untagged_z += 1
                    server.transport.write(prefix + msg if prefix else msg)
                    return
            else:
                syncs = untagged_syncs(msgs, link)
                if syncs:
                    # The extended protocol with the unnamed statement: nothing to rewrite.
                    link.untagged_z += syncs
                    data = b"".join([msg for _, msg in msgs])
                    server.transport.write(prefix + data if prefix else data)
                    return
        translator = Translator(link, self.statements, self.sql_statements, self.namespace)
        out = translator.feed(msgs)
        if translator.effects:
            self._note_effects(server, translator.effects)
        if translator.direct:
            self.transport.write(translator.direct)
        if prefix or out:
            server.transport.write(prefix + out)

    def _note_effects(self, server: ServerConn, effects: list[tuple[str, str, str]]) -> None:
        link = server.link
        assert link is not None
        for effect in effects:
            kind = effect[0]
            if kind == DIRTY:
                # State that cannot follow the client: the server is reset before reuse.
                if not server.dirty_reason:
                    log.debug("%s left %s on %s", self.prefix(), effect[1], server.ident)
                server.dirty_reason = effect[1]
            elif kind == ROLLBACK:
                self.saw_rollback = True
            elif kind == OPAQUE:
                # Level 1: only set_config with literal names ran, those names are enough to
                # read back; level 2: anything may have changed.
                level = 1 if named_settings(effect[1]) else 2
                if level > self.opaque:
                    log.debug("%s ran %s: its session is read back", self.prefix(), effect[1])
                    self.opaque = level
                if effect[2] and len(self.custom_names) < _CUSTOM_LIMIT:
                    self.custom_names.update(n for n in effect[2].split(",")
                                             if n not in _IDENTITY_SETS)
            else:
                if not self.pending_effects:
                    self.effects_mark = link.errors
                self.pending_effects.append(effect)

    def _settle_effects(self, server: ServerConn | None, committed: bool) -> None:
        """A transaction ended: keep its SET/RESET effects, or forget them if it failed."""
        effects, self.pending_effects = self.pending_effects, []
        self.effects_failed = False
        self.saw_rollback = False
        if not committed or not effects:
            return
        mine = self.session_sets
        theirs = server.session_sets if server is not None else {}
        tracked = self.app.tracked_params
        for kind, name, value in effects:
            if name in tracked:
                continue  # reported by the server with ParameterStatus: already followed
            if kind == SET:
                mine[name] = value
                theirs[name] = value
                if name == "session_authorization":
                    mine.pop("role", None)  # PostgreSQL resets the role with it
                    theirs.pop("role", None)
            elif kind == RESET:
                default = self.session_defaults.get(name)
                if default is None:
                    mine.pop(name, None)
                else:
                    mine[name] = default
                theirs.pop(name, None)
                if name == "session_authorization":
                    mine.pop("role", None)
                    theirs.pop("role", None)
            elif kind == RESET_ALL:
                # RESET ALL leaves the role and the session authorization alone.
                for sets in (mine, theirs):
                    kept = {n: sets[n] for n in _IDENTITY_SETS if n in sets}
                    sets.clear()
                    sets.update(kept)
                for n, v in self.session_defaults.items():
                    mine.setdefault(n, v)
            elif kind == DISCARD_ALL:
                mine.clear()
                mine.update(self.session_defaults)
                theirs.clear()

    def attach(self, server: ServerConn) -> None:
        self.server = server
        self.stats.assign_count += 1
        if (self.params == server.tracked and self.session_sets == server.session_sets
                and server.custom_owner is None):
            # The usual case, inlined: nothing to SET first.
            server.client = self.conn
            prefix = b""
        else:
            prefix = server.attach(self.conn)
        if self._paused & PAUSE_WAIT:
            self._resume(PAUSE_WAIT)  # paused while its last transaction was read back
        if self.translating:
            if server.link is None:
                server.start_tracking()
            msgs, self.pending_msgs = self.pending_msgs, []
            self._send_translated(server, msgs, prefix)
            return
        if self.pending:
            data = prefix + b"".join(self.pending)
            self.pending.clear()
        else:
            data = prefix
        if data:
            assert server.transport is not None
            server.transport.write(data)

    def on_server_ready(self, count: int, status: int) -> None:
        """ReadyForQuery came back from the linked server (``count`` of them in one chunk)."""
        server = self.server
        if server is not None and server.link is not None and server.link.lost_queries:
            # Queries the server skipped after an error: their ReadyForQuery never comes.
            count += server.link.lost_queries
            server.link.lost_queries = 0
        outstanding = self.outstanding - count
        if outstanding < 0:
            outstanding = 0
        self.outstanding = outstanding
        if self.pending_effects or self.saw_rollback:
            if status == 69:  # 'E': the transaction failed; its SETs will be undone
                self.effects_failed = True
            elif status == 73 and not outstanding:
                link = server.link if server is not None else None
                failed = (self.effects_failed or self.saw_rollback
                          or (link is not None and link.errors != self.effects_mark))
                self._settle_effects(server, not failed)
        pool = self.pool
        assert pool is not None
        stats = self.stats
        stats.query_count += count
        if outstanding:
            return
        now = self.app.now
        self.state_since = now
        done = monotonic()
        stats.query_time += done - self.busy_since
        if status == 73:  # 'I'
            stats.xact_count += 1
            stats.xact_time += done - (self.xact_start or self.busy_since)
            self.xact_start = 0.0
            self.xact_since = 0.0
        elif not self.xact_since:
            self.xact_since = now
            self.xact_start = self.busy_since
        if status != 73 or pool.mode == SESSION:
            return
        if server is None or self.stream.unsynced or self.stream.mid_message:
            return
        sstream = server.stream
        if sstream.held or sstream.skip:
            return  # the server is mid-message: keep it until the next boundary
        link = server.link
        if link is not None:
            if link.tags:
                return
            if link.needs_reset:
                server.needs_reset = True
        if server.dirty_reason or (server.identity_reported and server.identity_drifted()):
            server.needs_reset = True
        self.server = None
        server.client = None
        if server.paused_by_peer:
            server.detach()
        if self._paused & PAUSE_PEER:
            self._resume(PAUSE_PEER)
        if pool.reset_always:
            server.needs_reset = True
        if self.opaque:
            self._read_back(server)
            return
        pool.release(server)

    def _read_back(self, server: ServerConn) -> None:
        """Ask the server what the session holds before it goes back to the pool."""
        server.pool.move(server, TESTED)
        self.settling = server
        server.run_capture(capture_query(self.custom_names, full=self.opaque > 1),
                           self._settled)

    def _settled(self, server: ServerConn, ok: bool, rows: list[bytes]) -> None:
        pool = server.pool
        if self.settling is server:
            self.settling = None
        full = self.opaque > 1
        self.opaque = 0
        got = None
        if ok:
            try:
                got = parse_rows(rows)
            except ValueError:
                got = None
        if got is None:
            server.close("session read-back failed")
            pool.grow()
        else:
            login = server.initial_params.get("session_authorization", server.pool.user)
            tracked = self.app.tracked_params
            if full:
                sets = capture_sets(got, login, tracked)
                # Custom settings nobody named may remain: RESET ALL before another client.
                server.custom_owner = self
            else:
                sets = merge_named(self.session_sets, got, self.custom_names, login, tracked)
            if not self.closed:
                self.session_sets = sets
            server.session_sets = dict(sets)
            if got.hidden:
                log.debug("%s left %s on %s", self.prefix(), got.hidden[0], server.ident)
                server.dirty_reason = got.hidden[0]
                server.needs_reset = True
            pool.release(server)
        if not self.closed and self.server is None and self.pending_msgs and not self.waiting:
            self._dispatch_pending()

    def _dispatch_pending(self) -> None:
        """Messages queued while no server was linked: answer them or ask for a server."""
        pool = self.pool
        assert pool is not None
        pending = self.pending_msgs
        reply = (answer_without_server(pending, self.statements, pool.known_statements)
                 if pending[0][0] in SERVERLESS_FIRST else None)
        if reply is not None:
            self.outstanding -= sum(1 for kind, _ in pending if kind == 83)
            pending.clear()
            if reply:
                self.transport.write(reply)
            if self._paused & PAUSE_WAIT:
                self._resume(PAUSE_WAIT)
            if self.leaving:
                self.conn.leave_if_done()
        else:
            pool.request(self.conn)

    def refuses_transactions(self) -> bool:
        pool = self.pool
        return pool is not None and pool.mode == STATEMENT

    def refuse_transaction(self, ready: int) -> None:
        """Statement mode saw a transaction open: roll the server back, end the client."""
        server = self.server
        pool = self.pool
        assert server is not None and pool is not None
        self.server = None
        server.detach()
        if (self.outstanding <= ready and not self.stream.unsynced
                and not self.stream.mid_message and server.stream.at_boundary):
            pool.move(server, TESTED)
            server.run_internal(POOLER_ROLLBACK, "ROLLBACK")
        else:
            server.close("transaction blocks not allowed in statement pooling mode",
                         abort=True)
        message = "transaction blocks not allowed in statement pooling mode"
        self.fatal(ClientFatal(message), log_as=message)

    def server_lost(self, relayed: str = "", cut: bool = False) -> None:
        """The linked server is gone; ``relayed`` says why when the client already has the
        server's own error (a FATAL), which is then all it gets. ``cut``: in the middle of a
        message the client has partly received, where an error would be read as the rest of
        it; the client is then only disconnected."""
        self.server = None
        if relayed:
            self.close(relayed)
        elif not self.closed:
            error = ClientFatal("server conn crashed?", sqlstate="08006")
            if cut:
                log.warning("%s pooler error: %s (in the middle of a message: the client is "
                            "disconnected without it)", self.prefix(), error.message)
                self.close(error.message)
                return
            self.fatal(error, log_as=error.message)

