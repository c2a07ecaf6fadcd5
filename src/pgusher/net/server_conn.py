"""A connection from the pooler to a PostgreSQL server.

Strategy: connect, then log in through the sans-IO :class:`ServerLogin` (auth/server_login.py,
shared with auth_query's connections), carrying out its actions; then switch to the forwarding
path, where each received chunk is
scanned by :class:`ServerStream` and written to the linked client in one call. The pooler's own
queries (parameter SETs on link, the reset query, the check query, connect_query) are sent as
simple queries whose replies the stream swallows, so the client never sees them.
"""

from __future__ import annotations

import asyncio
import functools
import math
from typing import TYPE_CHECKING, cast

from ..auth.server_login import BackendKey, LoginDone, LoginFailed, Parameter, Send, ServerLogin
from ..errors import ProtocolError, ServerError
from ..log import log
from ..pooling.internal import CHECK, CONNECT, READ_BACK, Internal
from ..pooling.states import (
    ACTIVE,
    CONNECTING,
    IDLE,
    LOGIN,
    SERVER_CLOSED,
    TESTED,
    ServerState,
    move_server,
)
from ..protocol import messages as m
from ..protocol.framing import ServerStream
from ..protocol.link import LinkState
from . import cancel as cancel_mod
from .client_auth import scram_login
from .flow import PEER, FlowControl
from .flow import unlink as unlink_flows
from .server_session import CaptureDone, ServerSession
from .server_session import sql_ident as sql_ident
from .server_session import sql_literal as sql_literal
from .sockopts import tune_socket
from .tls import connect_server

if TYPE_CHECKING:
    from ..net.client_conn import ClientConn
    from ..pooling.pool import Pool
    from .cancel import Attempt


# Reported by the server but not the client's to carry: fixed at start, or derived from the
# role, which is carried by the statements that set it.
UNTRACKED_REPORTED = frozenset(("server_version", "server_encoding", "integer_datetimes",
                                "in_hot_standby", "is_superuser", "session_authorization"))
_IDENTITY = frozenset(("is_superuser", "session_authorization"))


EMPTY_CHECK = "<empty>"


class ServerConn(ServerSession, asyncio.Protocol):
    __slots__ = (
        "_capture_cb",
        "_host",
        "_internal",
        "_login",
        "_login_timer",
        "_port",
        "addr",
        "app",
        "cancel_hold",
        "cancels",
        "client",
        "close_reason",
        "closed",
        "created",
        "custom_owner",
        "dirty",
        "dirty_reason",
        "expires_at",
        "flow",
        "ident",
        "identity_reported",
        "idle_since",
        "initial_params",
        "key",
        "link",
        "listened",
        "local_addr",
        "needs_reset",
        "params",
        "pid",
        "pool",
        "session_sets",
        "state",
        "stream",
        "tracked",
        "transport",
    )

    def __init__(self, pool: Pool, addr: str, host: str | None, port: int) -> None:
        self.pool = pool
        self.app = pool.app
        self.addr = addr
        self._host = host  # None: a Unix socket, at addr
        self._port = port
        self.local_addr = ""
        self.transport: asyncio.Transport | None = None
        self.state: ServerState = CONNECTING
        settings = self.app.config.settings
        self.stream = ServerStream(self._on_param, settings.max_packet_size)
        self.client: ClientConn | None = None
        self.params: dict[str, str] = {}
        self.tracked: dict[str, str] = {}  # the tracked subset of params, by canonical name
        self.link: LinkState | None = None  # prepared statements on this server
        # Settings clients SET on this server (see protocol/session.py), and why the server
        # must be reset before its next client, if it must.
        self.session_sets: dict[str, str] = {}
        self.dirty_reason = ""
        # After a read-back, custom settings nobody named may remain: until a RESET ALL, only
        # the client whose transaction it was may use the server without one.
        self.custom_owner: object | None = None
        self._capture_cb: CaptureDone | None = None
        self.identity_reported = False  # is_superuser/session_authorization changed since login
        self.initial_params: dict[str, str] = {}
        self.pid = 0
        self.key = 0
        # Cancel requests on their way to this server's postmaster (net/cancel.py), and
        # whether one already sent keeps the server out of the pool.
        self.cancels: list[Attempt] = []
        self.cancel_hold = False
        now = self.app.loop.time()
        self.created = now
        self.idle_since = now
        lifetime = pool.target.server_lifetime
        # server_lifetime 0: used once, closed when its first client is done (as PgBouncer).
        self.expires_at = now + lifetime if lifetime > 0 else -math.inf
        self.needs_reset = False
        self.listened = False  # a client's LISTEN ran here: UNLISTEN * before the next client
        self.closed = False
        self.dirty = False
        self.close_reason = ""
        self._login: ServerLogin | None = None  # while logging in
        self._login_timer: asyncio.TimerHandle | None = None
        self._internal: Internal | None = None  # the query of the pooler's own under way
        self.flow = FlowControl()
        self.ident = f"S-0x{id(self):x}: {pool.name}@{addr}"
        self.app.metrics.registry.id_of(self)  # dropped when it closes

    # ------------------------------------------------------------------ login

    async def connect(self) -> None:
        """Open the connection; login continues in the protocol's callbacks."""
        app = self.app
        timeout = app.config.settings.server_connect_timeout or None
        try:
            if self._host is None:
                await asyncio.wait_for(
                    app.loop.create_unix_connection(lambda: self, self.addr[5:]), timeout)
            else:
                await asyncio.wait_for(connect_server(app.loop, self, self._host, self._port,
                                                      app.tls), timeout)
        except ServerError as exc:  # TLS refused or failed where the mode forbids plain text
            self._connect_failed(exc.message, exc)
        except (OSError, TimeoutError) as exc:
            reason = ("connect timeout" if isinstance(exc, TimeoutError)
                      else f"connect failed: {exc or exc.__class__.__name__}")
            self._connect_failed(reason, ServerError("pgusher cannot connect to server",
                                                     unreachable=True))

    def _connect_failed(self, reason: str, error: ServerError) -> None:
        if self.closed:
            return
        self.closed = True
        self.app.metrics.registry.ids.pop(self, None)
        move_server(self, SERVER_CLOSED)
        log.warning("%s closing because: %s (age=0s)", self.ident, reason)
        self.app.metrics.events.server_connect_failed(self.pool.db_name)
        self.pool.server_failed(self, error)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.flow.transport = self.transport
        move_server(self, LOGIN)
        sock = transport.get_extra_info("sockname")
        if isinstance(sock, tuple):
            tune_socket(self.transport, self.app.config.settings)
        if isinstance(sock, tuple):
            self.local_addr = f"{sock[0]}:{sock[1]}"
        else:
            self.local_addr = "unix"
        if self.app.config.settings.log_connections:
            log.info("%s new connection to server (from %s)", self.ident, self.local_addr)
        timeout = self.app.config.settings.server_connect_timeout
        if timeout > 0:
            self._login_timer = self.app.loop.call_later(timeout, self._login_timeout)
        user = self.pool.user
        target = self.pool.target
        self._login = ServerLogin(user, target.dbname, target.startup_params, self.pool.password,
                                  functools.partial(scram_login, self.app, user),
                                  who=f'server login as user "{user}"')
        self.transport.write(self._login.startup())

    def _login_timeout(self) -> None:
        self._login_timer = None
        if self.state == LOGIN:
            self._fail_login(ServerError("connect timeout", unreachable=True))

    def _login_data(self, data: bytes) -> None:
        login = self._login
        assert login is not None and self.transport is not None
        for action in login.feed(data):
            if isinstance(action, Send):
                self.transport.write(action.data)
            elif isinstance(action, Parameter):
                self.initial_params[action.name] = action.value
                self._on_param(action.name, action.value, False)
            elif isinstance(action, BackendKey):
                self.pid, self.key = action.pid, action.key
            elif isinstance(action, LoginFailed):
                self._fail_login(action.error, server_said=action.severity)
                return
            elif isinstance(action, LoginDone):
                # A server sends nothing unasked after ReadyForQuery, but an error may come
                # at any time: bytes behind it belong to the session, not to the login.
                rest = login.reader.take_rest()
                self._login_done()
                if rest and not self.closed:
                    self.data_received(rest)
                return
            if self.closed:
                return

    def _login_done(self) -> None:
        if self._login_timer is not None:
            self._login_timer.cancel()
            self._login_timer = None
        self._login = None
        connect_query = self.pool.target.connect_query
        if connect_query:
            self.pool.move(self, TESTED)
            self.run_internal(CONNECT, connect_query)
        else:
            self.pool.server_logged_in(self)

    def _after_connect_query(self, ok: bool) -> None:
        if not ok:
            err = self.stream.last_error or {}
            self._fail_login(ServerError("connect_query failed: " + err.get("M", "")))
            return
        self.pool.server_logged_in(self)

    def _fail_login(self, err: ServerError, server_said: str = "") -> None:
        if self.closed:
            return
        word = f"{server_said} " if server_said else ""
        log.warning("%s server login failed: %s%s", self.ident, word, err.message)
        if self.app.config.settings.log_disconnections:
            age = self.app.loop.time() - self.created
            log.info("%s closing because: %s (age=%ds)", self.ident, err.message, age)
        self.closed = True
        self.app.metrics.registry.ids.pop(self, None)
        move_server(self, SERVER_CLOSED)
        self._login = None
        if self._login_timer is not None:
            self._login_timer.cancel()
            self._login_timer = None
        if self.transport is not None:
            self.transport.close()
        self.app.metrics.events.server_login_failed(self.pool.db_name)
        self.pool.server_failed(self, err)

    # ------------------------------------------------------------------ data path

    def data_received(self, data: bytes) -> None:
        if self.state == LOGIN:
            self._login_data(data)
            return
        stream = self.stream
        try:
            out = stream.feed(data)
        except ProtocolError as exc:
            self.close(f"bad packet from server: {exc.message}", abort=True)
            return
        link = self.link
        if link is not None and link.release:
            # Client messages held back until a statement parsed again was checked.
            assert self.transport is not None
            self.transport.write(link.release)
            link.release = b""
        client = self.client
        if stream.fatal is not None:
            self._session_ended(client, out)
            return
        if client is not None:
            if stream.ready and stream.status != 73 and client.refuses_transactions():
                # Statement mode: the client opened a transaction. It gets the error in place
                # of the reply, so it never believes the transaction began.
                client.refuse_transaction(stream.ready)
                return
            if out:
                client.transport.write(out)
                client.stats.bytes_out += len(out)
            if stream.ready:
                client.on_server_ready(stream.ready, stream.status)
                if self.cancels:
                    cancel_mod.settle(self)  # a cancel still connecting for work now done
            if link is not None and link.deferred and client.server is self:
                waiting = link.take_deferred()
                if waiting:
                    # Client messages whose meaning waited for these replies.
                    client._send_translated(self, waiting)
            if client.leaving and stream.ready:
                client.leave_if_done()
        if stream.swallowed and stream.swallow == 0 and self._internal is not None:
            kind, self._internal = self._internal, None
            ok = stream.last_error is None and stream.status == 73  # 'I'
            if stream.last_error is not None:
                log.warning("%s internal query failed: %s", self.ident,
                            stream.last_error.get("M", ""))
            if kind is READ_BACK:
                self._captured(ok)
            elif kind is CONNECT:
                self._after_connect_query(ok)
            else:
                self.pool.internal_done(self, kind, ok)

    def _session_ended(self, client: ClientConn | None, out: bytes) -> None:
        """The backend sent a FATAL (pg_terminate_backend, a shutdown, a timeout of its own):
        its session is over. Its socket closes only once it has cleaned up (temporary tables,
        an aborted transaction), which can take seconds; meanwhile a linked client would sit
        on a dead session, and an idle server could go to the next client. So the server is
        dropped now, and its client, which gets the server's own error and nothing after it,
        is disconnected, as a direct connection is."""
        fatal = self.stream.fatal or {}
        if client is not None and out:
            client.transport.write(out)
            client.stats.bytes_out += len(out)
        said = f"{fatal.get('V', fatal.get('S', 'FATAL'))} {fatal.get('C', '')}"
        self.close(f"server ended the session: {said} {fatal.get('M', '')}", relayed=True)

    def _on_param(self, name: str, value: str, swallowed: bool) -> None:
        self.params[name] = value
        tracked = self.app.tracked_params
        low = name.lower()
        canon = tracked.get(low)
        if low in _IDENTITY and self.state != LOGIN:
            self.identity_reported = True
        if canon is None and low not in UNTRACKED_REPORTED:
            # Every setting the server reports follows its client, not only PgBouncer's six.
            tracked[low] = canon = name
        if canon is not None:
            self.tracked[canon] = value
            client = self.client
            if client is not None:
                client.params[canon] = value

    def start_tracking(self) -> None:
        self.link = LinkState(self.app.config.settings.max_prepared_statements,
                              self.pool.known_statements)
        self.stream.track(self.link)

    def run_internal(self, kind: Internal, sql: str) -> None:
        """Send a query of the pooler's own; its reply is swallowed, and what follows is
        decided by ``kind`` once it is in."""
        self.run_internal_msg(kind, m.query(sql))

    def run_internal_msg(self, kind: Internal, msg: bytes) -> None:
        assert self.transport is not None
        self._internal = kind
        self.stream.last_error = None
        self.stream.swallow += 1
        self.transport.write(msg)

    def in_pooler_query(self) -> bool:
        """Running a reset or check of the pooler's own, which no client waits for (a
        read-back's client does)."""
        return self._internal is not None and self._internal is not READ_BACK

    def held_for_cancel(self) -> bool:
        """Whether a cancel for its last client's query keeps it from the next one."""
        return cancel_mod.holds(self)

    def run_check(self) -> None:
        query = self.app.config.settings.server_check_query
        # PgBouncer's "<empty>" (its default): an empty query, answered without parsing.
        self.run_internal(CHECK, "" if query == EMPTY_CHECK else query)

    def should_close(self) -> bool:
        if self.dirty:
            self.close_reason = "database configuration changed"
            return True
        if self.expires_at <= self.app.now:
            self.close_reason = "server lifetime over"
            return True
        return False

    # ------------------------------------------------------------------ linking

    def detach(self) -> None:
        client = self.client
        self.client = None
        if client is not None:
            unlink_flows(client.flow, self.flow)

    def make_idle(self) -> None:
        self.client = None
        self.idle_since = self.app.now

    def pause_writing(self) -> None:
        self.flow.write_paused = True
        client = self.client
        if client is not None:
            client.flow.pause(PEER)

    def resume_writing(self) -> None:
        self.flow.write_paused = False
        client = self.client
        if client is not None:
            client.flow.resume(PEER)

    # ------------------------------------------------------------------ closing

    def close(self, reason: str, *, relayed: bool = False, abort: bool = False) -> None:
        """Close the connection. ``relayed``: the client already has the server's own error
        for this. ``abort`` when the server may be mid-reply or mid-request.

        An abort cuts the socket at once (a reset, since unread data is pending): the backend
        fails its next send, ends its transaction and frees its locks. A close would send
        Terminate behind whatever is queued and, with TLS, wait for the server's close_notify
        while it reads and discards the rest of a result, which may take long.
        """
        if self.closed:
            return
        self.closed = True
        self.app.metrics.registry.ids.pop(self, None)
        self.flow.closed = True
        was = self.state
        move_server(self, SERVER_CLOSED)
        if self.app.config.settings.log_disconnections:
            age = self.app.loop.time() - self.created
            log.info("%s closing because: %s (age=%ds)", self.ident, reason, age)
        transport = self.transport
        if transport is not None:
            if abort:
                transport.abort()
            else:
                if was is IDLE or was is ACTIVE or was is TESTED:
                    transport.write(m.TERMINATE)
                transport.close()
        if self.cancels:
            cancel_mod.settle(self)
        self._forget(was, reason if relayed else "")

    def _forget(self, was: ServerState, relayed: str = "") -> None:
        client = self.client
        self.client = None
        if was is CONNECTING or was is LOGIN:
            events = self.app.metrics.events
            if was is LOGIN:
                events.server_login_failed(self.pool.db_name)
            else:
                events.server_connect_failed(self.pool.db_name)
            self.pool.server_failed(self, ServerError("server closed the connection during login",
                                                      transient=True))
        else:
            self.pool.server_gone(self)
        if client is not None:
            client.server_lost(relayed, cut=self.stream.mid_forward)
        done, self._capture_cb = self._capture_cb, None
        if done is not None:
            done(self, False, [])  # a read-back cut short: its client must not wait for it

    def connection_lost(self, exc: Exception | None) -> None:
        if self._login_timer is not None:
            self._login_timer.cancel()
            self._login_timer = None
        if not self.closed:
            self.close("server conn crashed?" if self.state == ACTIVE else
                       "server closed the connection")


def new_server(pool: Pool) -> ServerConn:
    """A server connection for ``pool`` to the target's next address, not yet connected
    (see :meth:`ServerConn.connect`)."""
    host, port = pool.target.next_address()
    if host is None or host.startswith("/"):
        directory = host or pool.app.config.settings.unix_socket_dir or "/tmp"
        return ServerConn(pool, f"unix:{directory}/.s.PGSQL.{port}", None, port)
    return ServerConn(pool, f"{host}:{port}", host, port)
