"""auth_query on the network: one lookup connection per (auth database, auth_user).

Strategy: a lookup connection is the pooler's own, outside every pool (it is not counted in
pool sizes or connection limits). It logs in as auth_user with the same TLS rules as pool
connections, then answers lookups one at a time from a FIFO queue, driving the sans-IO
:class:`~pgusher.auth.auth_query.LookupSession`. It stays open for reuse and closes after
server_idle_timeout without lookups, on any error, and on RELOAD.

Results are not cached: every login asks the server, so a changed password, a dropped role or
a passed VALID UNTIL takes effect for the very next login.

Failures reach the waiting clients as PgBouncer words them: a failed login of the lookup
connection with the server's own error (``database "x" does not exist``), logged as any
server login failure; an error of the query itself, or an auth database that cannot be used
(not configured, disabled, the console), as "bouncer config error", with the reason in the
log only.
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

# What a client is told when auth_query cannot be used as configured (the reason is logged).
CONFIG_ERROR = ClientFatal("bouncer config error")
CONSOLE_DB = "pgbouncer"  # the console's database, never a place to run auth_query


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
            if event.login_failed is not None:
                word = f"{event.login_failed} " if event.login_failed else ""
                log.warning("%s server login failed: %s%s", self.ident, word,
                            event.error.message)
                self.fail(event.error, ClientFatal(event.error.message,
                                                   sqlstate=event.error.sqlstate))
            else:
                self.fail(event.error, CONFIG_ERROR)
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

    def fail(self, error: ServerError, told: ClientFatal | None = None) -> None:
        """End the connection; its waiting clients are ``told`` (default: that the lookup
        could not be made, with the reason)."""
        if not self.closed and told is CONFIG_ERROR:
            log.error("%s error in auth_query: %s", self.ident, error.message)
        elif not self.closed and told is None:
            log.warning("%s auth_query failed: %s", self.ident, error.message)
        if told is None:
            told = ClientFatal(f"auth_query failed: {error.message}", sqlstate="08006")
        waiters = ([self.current] if self.current is not None else []) + [
            d for _, _, d in self.queue]
        self.current = None
        self.queue.clear()
        self.close()
        for done in waiters:
            done(False, None, told)

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

    def lookup(self, target: DbTarget, user: str, done: LookupDone, who: str = "") -> bool:
        """Start looking ``user`` up; False when no auth_user applies to ``target``.
        ``who`` prefixes the log lines about the auth database (the client's prefix)."""
        found = self.settings_for(target)
        if found is None:
            return False
        auth_user, sql, dbname = found
        name = dbname or target.name
        if name == CONSOLE_DB:
            log.error('%s cannot use the reserved "%s" database as an auth_dbname', who, name)
            done(False, None, CONFIG_ERROR)
            return True
        auth_target = self.app.find_target(dbname) if dbname else target
        if auth_target is None:
            log.error('%s authentication database "%s" is not configured', who, dbname)
            done(False, None, CONFIG_ERROR)
            return True
        if auth_target.name in self.app.disabled_dbs:
            done(False, None, ClientFatal(f'authentication database "{name}" is disabled'))
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
