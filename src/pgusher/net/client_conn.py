"""A connection from an application to the pooler.

Strategy: the startup packet and authentication (see :mod:`.client_login`) need no server round
trip: the pooler checks passwords itself. The welcome (ParameterStatus set,
BackendKeyData, ReadyForQuery) comes from the pool's cached copy of a real server's login, so a
new client costs one write. After login, each chunk is scanned by :class:`ClientStream` and
written to the linked server in one call, or queued while the pool finds a server.

A client's server is released when its lease says so (protocol/lease.py: idle, nothing owed,
both streams between messages; see :mod:`.client_link`) in transaction mode, or when the client
leaves (session mode). A client that leaves mid-transaction or mid-COPY takes its server down
with it rather than leave it dirty in the pool; one that sends Terminate behind work it is owed
replies for is let go once that work is answered.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import struct
from bisect import bisect_left
from time import monotonic
from typing import TYPE_CHECKING, cast

from ..auth.scram import ScramServer
from ..errors import AuthError, ClientFatal, PgusherError, ProtocolError
from ..log import log
from ..metrics.counters import BOUNDS, UNCOUNTED
from ..pooling.states import (
    AUTH,
    CLIENT_LOGIN,
    CLOSED,
    LOGIN_WAIT,
    READY,
    SESSION,
    STARTUP,
    move_client,
)
from ..protocol import messages as m
from ..protocol.client_stream import ClientStream
from ..protocol.lease import Lease, releasable
from ..protocol.prepared import SqlStatement, Statement
from ..protocol.reader import MessageReader
from ..protocol.session import might_affect_session
from . import flow
from .client_link import ClientLink
from .client_login import ClientLogin
from .flow import FlowControl
from .sockopts import tune_socket

if TYPE_CHECKING:
    from ..app import Application
    from ..net.server_conn import ServerConn
    from ..pooling.pool import Pool

class _Gone(asyncio.Transport):
    """The transport of a client that left after its Terminate, while its last work runs."""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def is_closing(self) -> bool:
        return True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


_GONE = _Gone()
_CLIENT_NUMBERS = itertools.count(1)
_INT32_FROM = m.INT32.unpack_from

# Bytes a waiting client may queue before its reading is paused.
_PENDING_LIMIT = 256 * 1024



class ClientConn(ClientLink, ClientLogin):
    __slots__ = (
        "_auth_step",
        "_login_secret",
        "_login_timer",
        "_reader",
        "_salt",
        "_scram",
        "_secret",
        "addr",
        "admin",
        "app",
        "busy_since",
        "cancel_key",
        "cancel_pid",
        "channels",
        "closed",
        "connected_at",
        "counted",
        "db_name",
        "flow",
        "ident",
        "is_unix",
        "lease",
        "leaving",
        "listen_held",
        "namespace",
        "notifications",
        "params",
        "pending",
        "pending_msgs",
        "pinned",
        "pool",
        "server",
        "session_defaults",
        "session_sets",
        "settling",
        "sql_statements",
        "startup_params",
        "state",
        "state_since",
        "statements",
        "stats",
        "stream",
        "tls",
        "translating",
        "transport",
        "user",
        "wait_notified",
        "wait_started",
        "waiting",
        "welcome",
        "xact_since",
        "xact_start",
    )

    def __init__(self, app: Application, is_unix: bool) -> None:
        self.app = app
        self.is_unix = is_unix
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.state = STARTUP
        settings = app.config.settings
        # Longer messages stream in transaction and statement mode too (protocol/streamed.py).
        self.stream = ClientStream(settings.max_packet_size, 16 * max(settings.pkt_buf, 4096))
        self.server: ServerConn | None = None
        self.pool: Pool | None = None
        self.params: dict[str, str] = {}
        self.startup_params: dict[str, str] = {}
        self.pending: list[bytes] = []
        # Transaction/statement mode with prepared statements: whole messages, rewritten.
        self.translating = False
        self.pending_msgs: list[tuple[int, bytes]] = []
        self.statements: dict[bytes, Statement] = {}
        self.sql_statements: dict[str, SqlStatement] = {}
        self.namespace = f"q{next(_CLIENT_NUMBERS)}"  # never reused, unlike id()
        # Settings carried from server to server (see protocol/session.py): committed values,
        # startup defaults, and effects waiting for their transaction to end.
        self.session_sets: dict[str, str] = {}
        self.session_defaults: dict[str, str] = {}
        self.lease = Lease()  # its work on the server it is linked to (protocol/lease.py)
        # The transaction ran code whose session effects cannot be read from its text: the
        # server's session is read back before release (protocol/capture.py), meanwhile
        # ``settling`` holds that server and the client's new messages wait.
        self.settling: ServerConn | None = None
        self.leaving = False  # sent Terminate behind work still to be answered
        # LISTEN in transaction mode (net/listener.py): the channels it listens on, and the
        # notifications held until its transaction ends. None until first used.
        self.channels: set[str] | None = None
        self.notifications: list[bytes] | None = None
        self.listen_held: bytes | None = None  # a batch waiting for the listening connection
        self.waiting = False
        self.wait_started = 0.0
        self.wait_notified = False  # told this wait is long (query_wait_notify)
        self.closed = False
        self.counted = False
        self.user = "(nouser)"
        self.db_name = "(nodb)"
        self.addr = "?"
        self.connected_at = app.loop.time()
        # When the client last went busy or idle, and when its open transaction began.
        self.state_since = self.connected_at
        self.xact_since = 0.0
        self.cancel_pid = 0
        self.cancel_key = 0
        # Transaction mode: why the client keeps its server ("" = it does not).
        self.pinned = ""
        # Session mode: the welcome held until the client's server is linked (finish_login).
        self.welcome: dict[str, str] | None = None
        # The bytes of the login phase: the startup packet, then password messages, then what
        # a client sends before its welcome (see client_login.py).
        self._reader = MessageReader(m.MAX_STARTUP_PACKET, typed=False)
        self.flow = FlowControl()
        self._login_timer: asyncio.TimerHandle | None = None
        self._scram: ScramServer | None = None
        self._salt = b""
        self._secret = ""
        self._auth_step = ""
        self._login_secret: str | None = None  # a secret auth_query found
        self.tls = "no"  # or the TLS version/cipher in use
        self.ident = f"C-0x{id(self):x}"
        # Statistics: the counters of this client's (database, user, application), set at
        # login; precise start of the current query run and of the open transaction.
        self.stats = UNCOUNTED
        self.busy_since = 0.0
        self.xact_start = 0.0
        self.admin = False  # a login for the admin console

    def prefix(self) -> str:
        return f"C-0x{id(self):x}: {self.db_name}/{self.user}@{self.addr}"

    # ------------------------------------------------------------------ connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.flow.transport = self.transport
        if self.is_unix:
            sock = transport.get_extra_info("socket")
            pid = 0
            if sock is not None and hasattr(socket, "SO_PEERCRED"):
                try:
                    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                          struct.calcsize("3i"))
                    pid = struct.unpack("3i", raw)[0]
                except OSError:
                    pid = 0
            self.addr = f"unix({pid}):{self.app.config.settings.listen_port}"
        else:
            peer = transport.get_extra_info("peername")
            if isinstance(peer, tuple):
                self.addr = f"{peer[0]}:{peer[1]}"
        if not self.is_unix:
            tune_socket(transport, self.app.config.settings)
        self.app.client_connected(self)
        timeout = self.app.config.settings.client_login_timeout
        if timeout > 0:
            self._login_timer = self.app.loop.call_later(timeout, self._login_timeout)

    def _login_timeout(self) -> None:
        self._login_timer = None
        if self.state in CLIENT_LOGIN:
            self.fatal(ClientFatal("client_login_timeout"), log_as="client_login_timeout")

    def data_received(self, data: bytes) -> None:
        if self.state is READY:
            self.stats.bytes_in += len(data)
            if self.translating:
                self._data_translating(data)
                return
            stream = self.stream
            try:
                out = stream.feed(data)
            except ProtocolError as exc:
                self.fatal(exc)
                return
            if stream.expect:
                self._expect(stream.expect)
            server = self.server
            if server is not None:
                if out:
                    if out[0] == 81:
                        self.note_database_command(out)
                    server.transport.write(out)  # type: ignore[union-attr]
            elif out:
                pending = self.pending
                pending.append(out)
                if not self.waiting:
                    assert self.pool is not None
                    self.pool.request(self)
                elif len(pending) > 1 and sum(map(len, pending)) > _PENDING_LIMIT:
                    # Only a client that keeps sending while it waits is paused: pausing every
                    # waiter would cost two epoll_ctl calls per waited transaction.
                    self.flow.pause(flow.WAIT)
            if stream.terminated:
                self._terminated()
            return
        try:
            if self.state == STARTUP:
                self._startup_data(data)
            elif self.state == AUTH:
                self._auth_data(data)
            elif self.state == LOGIN_WAIT:
                self._reader.push(data)
                if self._reader.pending > self.app.config.settings.pkt_buf * 16:
                    raise ProtocolError("too much data before login completed")
        except PgusherError as exc:
            self.fatal(exc)

    def _expect(self, replies: int) -> None:
        """The client sent work that ``replies`` ReadyForQuery messages will close."""
        if self.lease.expect(replies):
            self.state_since = self.app.now
            self.busy_since = monotonic()

    def _data_translating(self, data: bytes) -> None:
        """The READY path when named statements must be rewritten (see protocol/translator.py)."""
        stream = self.stream
        server = self.server
        if (data[0] == 81 and stream.at_boundary and 5 <= len(data) <= stream.max_size
                and len(data) == 1 + _INT32_FROM(data, 1)[0]):
            # One whole simple query, the usual transaction-mode chunk: no message list.
            if server is None:
                if not self.waiting and not self.pending_msgs and self.settling is None:
                    self._expect(1)
                    self.pending_msgs.append((81, data))
                    assert self.pool is not None
                    self.pool.request(self)
                    return
            else:
                link = server.link
                if (link is not None and not link.tags and not link.skipping
                        and not might_affect_session(data[5:])):
                    self._expect(1)
                    link.untagged_z += 1
                    server.transport.write(data)  # type: ignore[union-attr]
                    return
        continuing = stream.mid_message
        try:
            msgs = stream.feed_messages(data)
        except ProtocolError as exc:
            self.fatal(exc)
            return
        if stream.expect:
            self._expect(stream.expect)
        server = self.server
        if continuing and msgs and server is None and not self.pending_msgs and not self.waiting:
            del msgs[0]  # the rest of a CopyData whose start was dropped: no server wanted it
        if server is not None:
            if msgs:
                self._send_translated(server, msgs)
        elif msgs:
            pending = self.pending_msgs
            pending.extend(msgs)
            if self.settling is None and not self.waiting:
                self._dispatch_pending()
            elif ((len(pending) > 64 or stream.mid_message)
                  and sum(len(m) for _, m in pending) > _PENDING_LIMIT):
                # Waiting for a server, or for the read-back of its last transaction (after
                # which the messages are sent): a client that keeps sending is paused.
                self.flow.pause(flow.WAIT)
        if stream.terminated:
            self._terminated()

    def _terminated(self) -> None:
        """The client sent Terminate. PostgreSQL runs what came before it first, so work still
        waiting for a server, or for its replies, is finished before the client goes.

        Only where the replies still due are counted exactly: every extended-protocol batch
        closed by its Sync, and no query ever sent inside one (the server may skip it with no
        reply). Work without its Sync would be rolled back by PostgreSQL when the session
        ends: the server is cut, as for any client that leaves before its work is done."""
        stream = self.stream
        if ((self.lease.outstanding or self.pending or self.pending_msgs)
                and not stream.unsynced and not stream.mid_message and not stream.uncounted):
            self.leaving = True
            self.transport.pause_reading()  # nothing after Terminate is read
            return
        self.close("client close request")

    def leave_if_done(self) -> None:
        """A client that sent Terminate behind its work goes once all of it is answered."""
        if not self.lease.outstanding and not self.pending and not self.pending_msgs:
            self.close("client close request")

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        if self.leaving:
            # Gone after its Terminate: its work still runs, and its replies go nowhere.
            self.transport = self.flow.transport = _GONE
            return
        self.close("client unexpected eof")

    # ------------------------------------------------------------------ linking

    def start_wait(self) -> None:
        self.waiting = True
        self.wait_notified = False
        self.wait_started = self.app.loop.time()

    def stop_wait(self) -> None:
        if self.waiting:
            self.waiting = False
            stats = self.stats
            waited = self.app.loop.time() - self.wait_started
            stats.wait_time += waited
            stats.wait_count += 1
            stats.wait_hist[bisect_left(BOUNDS, waited)] += 1
            if waited > stats.wait_max:
                stats.wait_max = waited
            if self.flow.reasons:
                self.flow.resume(flow.WAIT)

    # ------------------------------------------------------------------ backpressure

    def pause_writing(self) -> None:
        self.flow.write_paused = True
        server = self.server
        if server is not None:
            server.flow.pause(flow.PEER)

    def resume_writing(self) -> None:
        self.flow.write_paused = False
        server = self.server
        if server is not None:
            server.flow.resume(flow.PEER)

    # ------------------------------------------------------------------ errors and closing

    def fatal(self, exc: PgusherError, log_as: str | None = None) -> None:
        if self.closed:
            return
        severity = exc.severity if exc.severity in ("FATAL", "PANIC") else "FATAL"
        if self.app.config.settings.log_pooler_errors and not isinstance(exc, AuthError):
            log.warning("%s pooler error: %s", self.prefix(), exc.message)
        self.close(log_as or exc.message,
                   farewell=m.error_response(severity, exc.sqlstate, exc.message))

    def close(self, reason: str, quiet: bool = False, farewell: bytes = b"") -> None:
        """End the connection; ``farewell`` (an ErrorResponse) goes out after the closing
        line is logged, so whoever sees the error finds the reason in the log."""
        if self.closed:
            return
        self.closed = True
        self.flow.closed = True
        was = self.state
        move_client(self, CLOSED)
        app = self.app
        if app.config.settings.log_disconnections and not quiet:
            age = app.loop.time() - self.connected_at
            log.info("%s closing because: %s (age=%ds)", self.prefix(), reason, age)
        if farewell:
            self.transport.write(farewell)
        if self._login_timer is not None:
            self._login_timer.cancel()
            self._login_timer = None
        pool = self.pool
        if pool is not None and (self.waiting or was == LOGIN_WAIT):
            pool.cancel_wait(self)
        self.waiting = False
        server = self.server
        if server is not None and pool is not None:
            self.server = None
            server.detach()
            lease = self.lease
            if lease.outstanding or not releasable(self.stream, server.stream, server.link):
                server.close("client disconnect while server was not ready", abort=True)
            elif lease.opaque and pool.mode != SESSION:
                # Its last transaction may have changed the session unseen, and there is no
                # client left to read it back for.
                server.close("client left after work whose effects are unknown")
            else:
                if pool.mode == SESSION or app.config.settings.server_reset_query_always:
                    server.needs_reset = True
                pool.release(server)
        if self.channels and pool is not None:
            app.listeners.unsubscribe(self, pool, "*")
        app.client_closed(self)
        self.pending.clear()
        self.transport.close()
