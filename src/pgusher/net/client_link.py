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
from bisect import bisect_left
from time import monotonic
from typing import TYPE_CHECKING

from ..errors import ClientFatal
from ..log import log
from ..metrics.counters import BOUNDS, Counters
from ..pooling.internal import ROLLBACK as POOLER_ROLLBACK
from ..pooling.states import ACTIVE, SESSION, STATEMENT, TESTED, TRANSACTION
from ..protocol.capture import capture_query, merge_named, parse_rows
from ..protocol.capture import session_sets as capture_sets
from ..protocol.client_stream import ClientStream
from ..protocol.dbcommands import database_named
from ..protocol.lease import Effect, Lease, apply_effects, releasable
from ..protocol.prepared import SqlStatement, Statement
from ..protocol.session import DISCARD_ALL, LISTEN, UNLISTEN, might_affect_session
from ..protocol.shortcuts import answer_without_server, untagged_syncs
from ..protocol.translator import Translator
from .flow import LISTENING, WAIT, FlowControl
from .flow import link as link_flows
from .flow import unlink as unlink_flows

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..app import Application
    from ..pooling.pool import Pool
    from .client_conn import ClientConn
    from .server_conn import ServerConn

# Notifications a client in a long transaction may have waiting before it is disconnected.
NOTIFICATION_LIMIT = 100_000

# State that cannot move to another server: in transaction mode its client keeps its server
# while the state exists (checked by reading the session back after each transaction).
PIN_REASONS = frozenset(("temporary object", "session advisory lock", "WITH HOLD cursor"))

# Message types that can start a batch the pooler may answer itself: Parse, Close, Sync, and
# those no server answers (Flush, CopyData, CopyDone, CopyFail, 0 for a piece of CopyData).
SERVERLESS_FIRST = frozenset(b"PCSHdcf\0")


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
        lease: Lease
        settling: ServerConn | None
        leaving: bool
        waiting: bool
        channels: set[str] | None
        notifications: list[bytes] | None
        listen_held: bytes | None
        stats: Counters
        state_since: float
        busy_since: float
        xact_since: float
        xact_start: float
        flow: FlowControl
        welcome: dict[str, str] | None
        pinned: str
        conn: ClientConn  # ClientLogin's: this connection, typed as what it always is

        prefix: Callable[[], str]
        fatal: Callable[..., None]
        close: Callable[..., None]
        send_welcome: Callable[[dict[str, str], int], None]
        take_early: Callable[[], None]

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
        effects = translator.effects
        if effects:
            self._note_effects(server, effects)
        if translator.direct:
            self.transport.write(translator.direct)
        if self.listen_held is not None:
            self.listen_held += prefix + out  # behind a batch that waits: in order
            return
        if effects and self._listen_first(server, effects, prefix + out):
            return
        if prefix or out:
            server.transport.write(prefix + out)

    def _listen_first(self, server: ServerConn, effects: list[Effect], data: bytes) -> bool:
        """A batch that LISTENs waits until the pool's listening connection has its channels
        (net/listener.py); True when it was held for that."""
        channels = [name for kind, name, _ in effects if kind == LISTEN]
        pool = self.pool
        if not channels or pool is None or pool.mode == SESSION:
            return False
        server.listened = True
        server.stream.mute = True  # its own notifications come through the listener
        if self.app.listeners.ensure(pool, channels,
                                     lambda: self._listen_ready(server)):
            return False
        self.listen_held = data
        self.flow.pause(LISTENING)
        return True

    def _listen_ready(self, server: ServerConn) -> None:
        held, self.listen_held = self.listen_held, None
        if self.closed or held is None:
            return
        if (held and self.server is server and server.transport is not None
                and not server.closed):
            server.transport.write(held)
        self.flow.resume(LISTENING)

    def notify(self, message: bytes) -> None:
        """A NotificationResponse for a channel the client listens on: at once when it is
        idle, else after its transaction, as PostgreSQL delivers them."""
        if self.closed:
            return
        held = self.notifications
        if (held is None and not self.lease.outstanding and self.server is None
                and not self.pending_msgs):
            self.transport.write(message)
            return
        if held is None:
            held = self.notifications = []
        if len(held) >= NOTIFICATION_LIMIT:
            self.fatal(ClientFatal("too many notifications waiting for the end of the "
                                   "transaction", sqlstate="53400"))
            return
        held.append(message)

    def _deliver_notifications(self) -> None:
        held, self.notifications = self.notifications, None
        if held:
            self.transport.write(b"".join(held))

    def _commit_listens(self, committed: list[Effect]) -> None:
        """A transaction committed LISTEN, UNLISTEN or DISCARD ALL: subscribe or unsubscribe."""
        pool = self.pool
        if pool is None or pool.mode == SESSION:
            return
        listeners = self.app.listeners
        for kind, name, _ in committed:
            if kind == LISTEN:
                listeners.subscribe(self.conn, pool, name)
            elif kind == UNLISTEN:
                listeners.unsubscribe(self.conn, pool, name)
            elif kind == DISCARD_ALL:
                listeners.unsubscribe(self.conn, pool, "*")

    def _note_effects(self, server: ServerConn, effects: list[Effect]) -> None:
        link = server.link
        assert link is not None
        dirty, opaque = self.lease.note(effects, link.errors)
        if dirty:
            # State that cannot follow the client: the server is reset before reuse.
            if not server.dirty_reason:
                log.debug("%s left %s on %s", self.prefix(), dirty, server.ident)
            server.dirty_reason = dirty
            if (dirty in PIN_REASONS and self.pool is not None
                    and self.pool.mode == TRANSACTION and self.app.config.pgusher.pin_state):
                # A full read-back at the transaction's end says whether the state is there.
                self.lease.opaque = 2
        if opaque:
            log.debug("%s ran %s: its session is read back", self.prefix(), opaque)

    def attach(self, server: ServerConn) -> None:
        welcome = self.welcome
        if welcome is not None:
            # A session-mode login that waited for its server: the welcome names it.
            self.welcome = None
            self.send_welcome(welcome, server.pid)
            self._attach(server)
            self.take_early()
            return
        self._attach(server)

    def _attach(self, server: ServerConn) -> None:
        self.server = server
        self.stats.assign_count += 1
        if (self.params == server.tracked and self.session_sets == server.session_sets
                and server.custom_owner is None):
            # The usual case, inlined: nothing to SET first.
            server.client = self  # type: ignore[assignment]  # (self.conn, without the call)
            prefix = b""
        else:
            prefix = server.attach(self.conn)
        client_flow = self.flow
        if client_flow.reasons or client_flow.write_paused or server.flow.write_paused:
            link_flows(client_flow, server.flow)
            client_flow.resume(WAIT)  # paused while waiting, or while its last was read back
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

    def note_database_command(self, query: bytes) -> None:
        """Session mode: a simple query about to go to the server. A command that needs its
        database to itself would otherwise wait and fail on the pooler's own idle
        connections to it, which a direct connection would not have: they are closed first."""
        name = database_named(query)
        if name is None:
            return
        closed = self.app.close_idle_servers(name, "closed for a command that needs the "
                                                   "database to itself")
        if closed:
            log.info("%s closed %d idle server connections to %s before its %s", self.prefix(),
                     closed, name, query[5:25].decode("utf-8", "replace").split()[0].upper())

    def on_server_ready(self, count: int, status: int) -> None:
        """ReadyForQuery came back from the linked server (``count`` of them in one chunk)."""
        server = self.server
        lease = self.lease
        committed = lease.ready(count, status, server.link if server is not None else None)
        if committed is not None:
            apply_effects(committed, self.session_sets,
                          server.session_sets if server is not None else {},
                          self.session_defaults, self.app.tracked_params)
            if (server is not None and server.listened) or self.channels:
                self._commit_listens(committed)
        outstanding = lease.outstanding
        pool = self.pool
        assert pool is not None
        stats = self.stats
        stats.query_count += count
        if outstanding:
            return
        now = self.app.now
        self.state_since = now
        done = monotonic()
        took = done - self.busy_since
        stats.query_time += took
        stats.query_hist[bisect_left(BOUNDS, took)] += 1
        if status == 73:  # 'I'
            if self.notifications is not None:
                self._deliver_notifications()
            stats.xact_count += 1
            took = done - (self.xact_start or self.busy_since)
            stats.xact_time += took
            stats.xact_hist[bisect_left(BOUNDS, took)] += 1
            self.xact_start = 0.0
            self.xact_since = 0.0
        elif not self.xact_since:
            self.xact_since = now
            self.xact_start = self.busy_since
        if status != 73 or pool.mode == SESSION or server is None:
            return
        link = server.link
        if not releasable(self.stream, server.stream, link):
            return
        if link is not None and link.needs_reset:
            server.needs_reset = True
        if server.dirty_reason or (server.identity_reported and server.identity_drifted()):
            server.needs_reset = True
        self.server = None
        server.client = None
        if self.flow.reasons or server.flow.reasons:
            unlink_flows(self.flow, server.flow)
        if pool.reset_always:
            server.needs_reset = True
        if lease.opaque or self.pinned:
            if self.pinned:
                lease.opaque = 2  # a full read-back: is the state that pins it still there?
            self._read_back(server)
            return
        pool.release(server)

    def _read_back(self, server: ServerConn) -> None:
        """Ask the server what the session holds before it goes back to the pool."""
        server.pool.move(server, TESTED)
        self.settling = server
        lease = self.lease
        server.run_capture(capture_query(lease.custom_names, full=lease.opaque > 1),
                           self._settled)

    def _settled(self, server: ServerConn, ok: bool, rows: list[bytes]) -> None:
        pool = server.pool
        if self.settling is server:
            self.settling = None
        level, custom_names = self.lease.take_read_back()
        full = level > 1
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
                sets = merge_named(self.session_sets, got, custom_names, login, tracked)
            if not self.closed:
                self.session_sets = sets
            server.session_sets = dict(sets)
            if got.hidden:
                log.debug("%s left %s on %s", self.prefix(), got.hidden[0], server.ident)
                server.dirty_reason = got.hidden[0]
                server.needs_reset = True
            if self._keeps(server, got.hidden):
                return
            pool.release(server)
        if not self.closed and self.server is None and self.pending_msgs and not self.waiting:
            self._dispatch_pending()

    def _keeps(self, server: ServerConn, hidden: list[str]) -> bool:
        """After a read-back: whether the client keeps this server, re-linked, because state
        that cannot move is on it (True). A client over max_pinned_servers is told so and
        disconnected rather than left to lose that state unseen."""
        pool = server.pool
        reasons = [h for h in hidden if h in PIN_REASONS]
        if (not reasons or self.closed or pool.mode != TRANSACTION
                or not self.app.config.pgusher.pin_state):
            if self.pinned:
                log.debug("%s no longer pinned to %s", self.prefix(), server.ident)
            self.pinned = ""
            return False
        cap = self.app.config.pgusher.max_pinned_servers
        if cap and not self.pinned and sum(1 for s in pool.active
                                           if s.client is not None and s.client.pinned) >= cap:
            self.pinned = ""
            message = (f"too many pinned server connections (max_pinned_servers={cap}): "
                       f"its {reasons[0]} cannot be kept")
            self.fatal(ClientFatal(message, sqlstate="53400"), log_as=message)
            return False
        if self.pinned != reasons[0]:
            log.info("%s pinned to %s: %s", self.prefix(), server.ident, reasons[0])
        self.pinned = reasons[0]
        pool.move(server, ACTIVE)
        self._attach(server)
        return True

    def _dispatch_pending(self) -> None:
        """Messages queued while no server was linked: answer them or ask for a server."""
        pool = self.pool
        assert pool is not None
        pending = self.pending_msgs
        reply = (answer_without_server(pending, self.statements, pool.known_statements)
                 if pending[0][0] in SERVERLESS_FIRST else None)
        if reply is not None:
            self.lease.answered(sum(1 for kind, _ in pending if kind == 83))
            pending.clear()
            if reply:
                self.transport.write(reply)
            if self.notifications is not None and not self.lease.outstanding:
                self._deliver_notifications()
            self.flow.resume(WAIT)
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
        if (self.lease.outstanding <= ready and not self.stream.unsynced
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


    def timed_out(self, reason: str) -> None:
        """A timeout ended the client's work on its server: the server goes first, with
        ``reason`` in its closing line, then the client, told FATAL 08P01 ``reason``."""
        server = self.server
        if server is not None:
            self.server = None
            server.detach()
            server.close(reason, abort=True)
        self.fatal(ClientFatal(reason), log_as=reason)
