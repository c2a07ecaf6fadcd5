"""auth_query on the network: one lookup connection per (auth database, auth_user).

Strategy: a lookup connection is the pooler's own, outside every pool (it is not counted in
pool sizes or connection limits). It logs in as auth_user with the same TLS rules as pool
connections, then answers lookups one at a time from a FIFO queue, driving the sans-IO
:class:`~pgusher.auth.auth_query.LookupSession`. It stays open for reuse and closes after
server_idle_timeout without lookups, on any error, and on RELOAD.

Results are not cached: every login asks the server, so a changed password, a dropped role or
a passed VALID UNTIL takes effect for the very next login.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from ..auth.auth_query import Event, LookupSession
from ..errors import ClientFatal, PgusherError, ServerError
from ..log import log
from .side import connect_to

if TYPE_CHECKING:
    from ..app import Application, DbTarget

# found, secret, error
LookupDone = Callable[[bool, "str | None", "PgusherError | None"], None]


class LookupConn(asyncio.Protocol):
    def __init__(self, service: LookupService, key: tuple[str, str], target: DbTarget,
                 auth_user: str, password: str | None,
                 keys: tuple[bytes, bytes] | None) -> None:
        self.service = service
        self.app = service.app
        self.key = key
        self.target = target
        self.session = LookupSession(auth_user, target.dbname, password, keys)
        self.queue: deque[tuple[str, str, LookupDone]] = deque()
        self.current: LookupDone | None = None
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._timer: asyncio.TimerHandle | None = None
        self.ident = f"S-0x{id(self):x}: {target.name}/{auth_user}@auth_query"

    # -- lifecycle

    async def open(self) -> None:
        s = self.app.config.settings
        try:
            await connect_to(self.app, self, self.target)
        except ServerError as exc:
            self.fail(exc)
        except OSError as exc:  # TimeoutError included
            self.fail(ServerError(f"cannot connect to server for auth_query: "
                                  f"{exc or exc.__class__.__name__}"))
        else:
            self._arm(s.server_connect_timeout, "auth_query login timed out")

    def _arm(self, delay: float, reason: str) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if delay > 0 and not self.closed:
            self._timer = self.app.loop.call_later(delay, self._expire, reason)

    def _expire(self, reason: str) -> None:
        self._timer = None
        if self.current is None and not self.queue and self.session.state == "ready":
            self.close()
        else:
            self.fail(ServerError(reason))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.session.startup())

    def data_received(self, data: bytes) -> None:
        events = self.session.feed(data)
        out = self.session.take_output()
        if out and self.transport is not None:
            self.transport.write(out)
        for event in events:
            self._event(event)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.fail(ServerError("auth_query connection closed by the server"))

    def _event(self, event: Event) -> None:
        if event.kind == "failed":
            assert event.error is not None
            self.fail(event.error)
            return
        done, self.current = self.current, None
        if done is not None:
            done(event.found, event.secret, None)
        self._next()

    def _next(self) -> None:
        if self.closed or self.current is not None or self.session.state != "ready":
            return
        if not self.queue:
            self._arm(self.app.config.settings.server_idle_timeout, "idle")
            return
        sql, user, done = self.queue.popleft()
        self.current = done
        self._arm(self.app.config.settings.server_connect_timeout or 15.0,
                  "auth_query timed out")
        assert self.transport is not None
        self.transport.write(self.session.lookup(sql, user))

    def submit(self, sql: str, user: str, done: LookupDone) -> None:
        self.queue.append((sql, user, done))
        self._next()

    def fail(self, error: ServerError) -> None:
        if not self.closed:
            log.warning("%s auth_query failed: %s", self.ident, error.message)
        waiters = ([self.current] if self.current is not None else []) + [
            d for _, _, d in self.queue]
        self.current = None
        self.queue.clear()
        self.close()
        for done in waiters:
            done(False, None, ClientFatal(f"auth_query failed: {error.message}",
                                          sqlstate="08006"))

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


class LookupService:
    """Finds the auth_query settings for a database and routes lookups to a connection."""

    def __init__(self, app: Application) -> None:
        self.app = app
        self.conns: dict[tuple[str, str], LookupConn] = {}

    def settings_for(self, target: DbTarget) -> tuple[str, str, str | None] | None:
        """(auth_user, auth_query, auth_dbname) in effect for ``target``, or None."""
        s = self.app.config.settings
        entry = target.entry
        auth_user = entry.auth_user or s.auth_user
        if not auth_user:
            return None
        return auth_user, entry.auth_query or s.auth_query, entry.auth_dbname or s.auth_dbname

    def lookup(self, target: DbTarget, user: str, done: LookupDone) -> bool:
        """Start looking ``user`` up; False when no auth_user applies to ``target``."""
        found = self.settings_for(target)
        if found is None:
            return False
        auth_user, sql, dbname = found
        auth_target = self.app.find_target(dbname) if dbname else target
        if auth_target is None:
            done(False, None, ClientFatal(f"auth_dbname {dbname} is not in [databases]",
                                          sqlstate="08006"))
            return True
        key = (auth_target.name, auth_user)
        conn = self.conns.get(key)
        if conn is None:
            password = self.app.userlist.get(auth_user)
            if password is None and auth_target.user == auth_user:
                password = auth_target.password
            keys = (self.app.scram_keys.keys_for(auth_user, password)
                    if password is not None else None)
            conn = LookupConn(self, key, auth_target, auth_user, password, keys)
            self.conns[key] = conn
            self.app.loop.create_task(conn.open())
        conn.submit(sql, user, done)
        return True

    def forget(self, conn: LookupConn) -> None:
        if self.conns.get(conn.key) is conn:
            del self.conns[conn.key]

    def reset(self) -> None:
        """Configuration changed: idle connections close, busy ones after their lookup."""
        for conn in list(self.conns.values()):
            self.forget(conn)
            if conn.current is None and not conn.queue:
                conn.close()
