"""LISTEN and NOTIFY in transaction and statement mode: one listening connection per pool.

Strategy: a client's LISTEN runs on its server as it came (so the client gets PostgreSQL's own
reply and errors), and the channel is also LISTENed on the pool's listening connection, a
connection of the pooler's own, outside the pool (not counted in pool sizes or limits, like
the auth_query connection). The client's batch waits until that connection has the channel,
so from the moment the client's LISTEN commits nothing sent to the channel is missed. Once it
has committed the client is subscribed (an UNLISTEN or DISCARD ALL that commits takes the
subscription back, a rolled-back LISTEN never makes one). The server that ran the LISTEN drops
the notifications it gets itself (they come through the listening connection) and runs
``UNLISTEN *`` before its next client.

Each NotificationResponse is handed, as the server sent it, to every client subscribed to its
channel: at once to an idle client, after the transaction to one in a transaction, as
PostgreSQL delivers them. A channel nobody listens on any more is UNLISTENed. When the
listening connection is lost, its subscribers are disconnected, as a direct connection that
lost its server would be: what they were waiting for can no longer come.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from ..auth.server_login import ServerLogin
from ..errors import ClientFatal, ServerError
from ..log import log
from ..protocol.listen import LISTEN_VERB, UNLISTEN_VERB, Done, Ended, ListenSession, Notification
from .side import connect_to, login_step, pool_login

if TYPE_CHECKING:
    from ..app import Application
    from ..pooling.pool import Pool
    from .client_conn import ClientConn

Ready = Callable[[], None]
PoolKey = tuple[str, str]


class ListenConn(asyncio.Protocol):
    """The listening connection of one pool."""

    def __init__(self, service: Listeners, pool: Pool) -> None:
        self.service = service
        self.app = service.app
        self.key: PoolKey = (pool.db_name, pool.user)
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.session: ListenSession | None = None  # once logged in
        self._login: ServerLogin | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.listening: set[str] = set()  # channels the server has (or is about to have)
        self.waiting: dict[str, list[Ready]] = {}  # channels whose LISTEN is on its way
        self.queued: list[str] = []  # channels to LISTEN once logged in
        self.subscribers: dict[str, set[ClientConn]] = {}
        self.ident = f"S-0x{id(self):x}: {pool.name}@listen"

    # -- lifecycle

    async def open(self) -> None:
        app = self.app
        s = app.config.settings
        try:
            await connect_to(app, self, self.pool.target)
        except ServerError as exc:
            self.fail(exc.message)
        except OSError as exc:  # TimeoutError included
            self.fail(f"cannot connect to server: {exc or exc.__class__.__name__}")
        else:
            if s.server_connect_timeout > 0 and self.session is None and not self.closed:
                self._timer = app.loop.call_later(s.server_connect_timeout, self.fail,
                                                  "login timed out (server_connect_timeout)")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._login = pool_login(self.app, self.pool, "listening connection")
        self.transport.write(self._login.startup())

    def data_received(self, data: bytes) -> None:
        login = self._login
        if login is not None:
            assert self.transport is not None
            done, data, error = login_step(login, data, self.transport)
            if error is not None:
                self.fail(error.message)
                return
            if not done:
                return
            self._logged_in()
        if self.session is None or self.closed:
            return
        for event in self.session.feed(data):
            if isinstance(event, Notification):
                for client in list(self.subscribers.get(event.channel, ())):
                    client.notify(event.message)
            elif isinstance(event, Done):
                self._done(event)
            elif isinstance(event, Ended):
                self.fail(event.reason)
                return

    def _logged_in(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._login = None
        self.session = ListenSession(self.app.config.settings.max_packet_size)
        log.debug("%s listening connection ready", self.ident)
        queued, self.queued = self.queued, []
        for channel in queued:
            self._send(LISTEN_VERB, channel)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.fail("closed by the server")

    def fail(self, reason: str) -> None:
        """The connection is lost: LISTENs waiting are let go (the clients' own LISTEN runs
        and a later subscription opens a new connection), and subscribers are disconnected."""
        if self.closed:
            return
        log.warning("%s listening connection failed: %s", self.ident, reason)
        self.close()
        waiting, self.waiting = self.waiting, {}
        for ready in (r for each in waiting.values() for r in each):
            ready()
        clients = {c for each in self.subscribers.values() for c in each}
        self.subscribers.clear()
        for client in clients:
            client.channels = None
            client.fatal(ClientFatal("the pooler's listening connection to the server was "
                                     "lost: notifications cannot be delivered", sqlstate="08006"))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.service.forget(self)
        if self.transport is not None:
            self.transport.close()

    # -- channels

    def _send(self, verb: str, channel: str) -> None:
        assert self.session is not None and self.transport is not None
        self.transport.write(self.session.command(verb, channel))

    def _done(self, event: Done) -> None:
        if event.error is not None:
            log.warning("%s %s %s failed: %s", self.ident, event.verb, event.channel,
                        event.error.get("M", ""))
            if event.verb == LISTEN_VERB:
                self.listening.discard(event.channel)
        if event.verb == LISTEN_VERB:
            for ready in self.waiting.pop(event.channel, ()):
                ready()

    def ensure(self, channel: str, ready: Ready) -> bool:
        """True when the server already listens on ``channel``; else ``ready`` is called once
        it does (or once that failed: the client's own LISTEN then meets the same error)."""
        if channel in self.listening and channel not in self.waiting:
            return True
        self.waiting.setdefault(channel, []).append(ready)
        if channel not in self.listening:
            self.listening.add(channel)
            if self.session is None:
                self.queued.append(channel)
            else:
                self._send(LISTEN_VERB, channel)
        return False

    def subscribe(self, client: ClientConn, channel: str) -> None:
        self.subscribers.setdefault(channel, set()).add(client)
        if channel not in self.listening:
            # Its LISTEN failed here, or the connection is new: listen (again).
            self.ensure(channel, _nothing)

    def unsubscribe(self, client: ClientConn, channel: str) -> None:
        clients = self.subscribers.get(channel)
        if clients is None:
            return
        clients.discard(client)
        if not clients:
            del self.subscribers[channel]
            if channel in self.listening and channel not in self.waiting:
                self.listening.discard(channel)
                if self.session is not None and not self.closed:
                    self._send(UNLISTEN_VERB, channel)


def _nothing() -> None:
    return None


class Listeners:
    """The listening connections of every pool, and the clients' subscriptions."""

    def __init__(self, app: Application) -> None:
        self.app = app
        self.conns: dict[PoolKey, ListenConn] = {}

    def _conn(self, pool: Pool) -> ListenConn:
        conn = self.conns.get((pool.db_name, pool.user))
        if conn is None or conn.closed or conn.pool is not pool:
            conn = ListenConn(self, pool)
            self.conns[conn.key] = conn
            self.app.loop.create_task(conn.open())
        return conn

    def ensure(self, pool: Pool, channels: list[str], ready: Ready) -> bool:
        """True when the pool's listening connection has every channel already; else
        ``ready`` is called once, when all of them are settled."""
        conn = self._conn(pool)
        left = [0]

        def one_done() -> None:
            left[0] -= 1
            if left[0] == 0:
                ready()

        for channel in channels:
            left[0] += 1
            if conn.ensure(channel, one_done):
                left[0] -= 1
        return left[0] == 0

    def subscribe(self, client: ClientConn, pool: Pool, channel: str) -> None:
        conn = self._conn(pool)
        conn.subscribe(client, channel)
        if client.channels is None:
            client.channels = set()
        client.channels.add(channel)

    def unsubscribe(self, client: ClientConn, pool: Pool, channel: str) -> None:
        """``channel`` "*": every channel of the client."""
        mine = client.channels
        if not mine:
            return
        conn = self.conns.get((pool.db_name, pool.user))
        for name in (list(mine) if channel == "*" else [channel] if channel in mine else []):
            mine.discard(name)
            if conn is not None:
                conn.unsubscribe(client, name)
        if not mine:
            client.channels = None

    def forget(self, conn: ListenConn) -> None:
        if self.conns.get(conn.key) is conn:
            del self.conns[conn.key]

    def close_all(self) -> None:
        for conn in list(self.conns.values()):
            conn.close()
