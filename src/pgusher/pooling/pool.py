"""One pool per (database, login user): servers by state, waiters served fairly, limits.

Herding happens here and nowhere else. A server is in exactly one container, the one its
state names (pooling/states.py): ``login`` (connecting or logging in), ``idle`` (a LIFO
stack, so the warmest connection is reused and surplus ones age out), ``active`` (linked to a
client, or held for a cancel) or ``tested`` (running the pooler's own query with no client).
:meth:`Pool.move` is the one place both change, so SHOW POOLS reads the containers' sizes.
Waiting clients queue in arrival order within an application, and the applications take
turns by weight (queue.py). Every transition is synchronous and runs inside a
transport callback, so a server offered to a waiter is linked in the same call: there is no
window in which it could be lost or given twice.

Limits are checked when a connection is about to be opened: the pool size (plus the reserve
once a client has waited reserve_pool_timeout), max_db_connections across the database's pools
and max_user_connections across the user's pools. With several workers the same three are
also counted in the table the workers share (workers/shared.py), so they hold for the whole
pooler; workers/balance.py moves servers to where clients wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from typing import TYPE_CHECKING

from ..config.settings import parse_app_weights
from ..errors import ClientFatal, ServerError
from ..log import log
from ..protocol.prepared import KnownStatements
from ..workers.shared import key_hash
from .internal import RESET, UNLISTEN, Internal
from .queue import FairQueue
from .states import (
    ACTIVE,
    CONNECTING,
    IDLE,
    LOGIN,
    SERVER_MOVES,
    TESTED,
    IllegalMove,
    ServerState,
)

if TYPE_CHECKING:
    from ..app import Application, DbTarget
    from ..net.client_conn import ClientConn
    from ..net.server_conn import ServerConn

# A server that worked this recently (or within server_login_retry, if longer) and now
# refuses connections is taken to be restarting: its clients are held for it.
_RECENT = 10.0


def _application(client: ClientConn) -> str:
    return client.stats.application


class Pool:
    __slots__ = ("_retry_handle", "active", "alive_at", "app", "app_limit", "blocked",
                 "check_delay",
                 "db_name", "failing_since", "give_back", "held", "idle",
                 "known_statements", "last_login_error", "last_login_failed_at", "limit",
                 "login", "login_waiters", "mode", "name", "others_want", "password", "paused",
                 "reserve_active", "reset_always", "retry_at", "share_cap", "shared_slots",
                 "target", "tested", "user", "waiting", "welcome_params")

    def __init__(self, app: Application, target: DbTarget, user: str, password: str | None,
                 mode: str) -> None:
        self.app = app
        self.target = target
        self.db_name = target.name
        self.user = user
        self.password = password
        self.mode = mode
        self.name = f"{target.name}/{user}"
        # The servers, by state (see move).
        self.login: set[ServerConn] = set()
        self.idle: list[ServerConn] = []
        self.active: set[ServerConn] = set()
        self.tested: set[ServerConn] = set()
        # Waiting clients, served fairly between applications (queue.py).
        self.waiting: FairQueue[ClientConn] = FairQueue(_application)
        self.login_waiters: list[ClientConn] = []
        self.welcome_params: dict[str, str] | None = None
        self.last_login_failed_at = 0.0
        self.last_login_error: ServerError | None = None
        # Server logins failing (see server_failed): since when, whether the clients are held
        # for the server to come back, and when the next attempt may start. When a server of
        # this pool was last known to work.
        self.failing_since = 0.0
        self.held = False
        self.retry_at = 0.0
        self.alive_at = -math.inf
        self.reserve_active = False
        self.known_statements = KnownStatements()  # prepared-statement keys a server accepted
        # Workers only: this pool's, its database's and its user's slots in the shared table;
        # whether the shared limits stopped it opening a server; whether to hand one back.
        self.shared_slots: tuple[int, int, int] | None = None
        self.blocked = False
        self.give_back = False
        self.others_want = False  # another worker's clients wait for this pool's servers
        self.share_cap = 0.0  # then hold no more than this many (see workers/balance.py)
        # PAUSE, KILL, SUSPEND or shutdown: queue clients, hand out no server, open none.
        self.paused = app.paused or target.name in app.paused_dbs
        self._retry_handle: asyncio.TimerHandle | None = None
        # Derived from the configuration once (and again on reload), not per transaction.
        self.limit = 0
        self.check_delay: float | None = None
        self.reset_always = False
        self.app_limit = 0  # max_app_connections
        self.refresh()

    def refresh(self) -> None:
        """Recompute what the configuration says for this pool (at creation and on reload)."""
        app = self.app
        s = app.config.settings
        self.mode = app.effective_pool_mode(self.target, self.user)
        self.limit = app.effective_pool_size(self)
        if self.reserve_active:
            self.limit += app.effective_reserve_size(self)
        self.check_delay = (s.server_check_delay
                            if s.server_check_query and s.server_check_delay >= 0 else None)
        self.reset_always = s.server_reset_query_always
        self.waiting.weights = parse_app_weights(app.config.pgusher.app_weights)
        self.app_limit = app.config.pgusher.max_app_connections

    def set_reserve(self, active: bool) -> None:
        if active != self.reserve_active:
            self.reserve_active = active
            self.refresh()

    # ----------------------------------------------------------- sizes and limits

    @property
    def total(self) -> int:
        return len(self.login) + len(self.idle) + len(self.active) + len(self.tested)

    @property
    def connecting(self) -> int:
        return len(self.login)

    def in_use(self) -> list[ServerConn]:
        """The servers that are neither idle nor logging in: linked, or running a query of
        the pooler's own."""
        return [*self.active, *self.tested]

    # ----------------------------------------------------------- states

    def move(self, server: ServerConn, new: ServerState) -> None:
        """Give ``server`` the state ``new`` and put it in that state's container."""
        old = server.state
        if new not in SERVER_MOVES[old]:
            raise IllegalMove(f"server state {old.value} cannot become {new.value}")
        server.state = new
        if old is new:
            return
        if old is IDLE:
            idle = self.idle
            if idle and idle[-1] is server:
                idle.pop()
            else:
                idle.remove(server)
        elif old is ACTIVE:
            self.active.discard(server)
        elif old is TESTED:
            self.tested.discard(server)
        elif old is LOGIN or old is CONNECTING:
            self.login.discard(server)
        if new is ACTIVE:
            self.active.add(server)
        elif new is IDLE:
            self.idle.append(server)
        elif new is TESTED:
            self.tested.add(server)
        elif new is LOGIN or new is CONNECTING:
            self.login.add(server)

    def _may_open(self) -> bool:
        app = self.app
        if app.shutting_down or self.paused:
            return False
        if self.total >= self.limit:
            return False
        max_db = app.effective_max_db_connections(self.target)
        if max_db and app.db_server_count(self.db_name) >= max_db:
            return False
        max_user = app.effective_max_user_connections(self.user)
        if max_user and app.user_server_count(self.user) >= max_user:
            return False
        fleet = app.fleet
        if fleet is not None:
            member = fleet.of(self)
            if not member.allows_one_more():
                member.wanted()  # the fleet's grant is the limit: ask for more
                return False
        if self.failing_since:
            # While logins fail, one attempt at a time, and not before its time.
            return not self.connecting and app.loop.time() >= self.retry_at
        return True

    def try_open(self) -> bool:
        """_may_open, then (with several workers) count the server in the shared table."""
        if not self._may_open():
            return False
        shared = self.app.shared
        if shared is None:
            return True
        if self.others_want and self.total >= self.share_cap:
            self.blocked = True  # leave the next server to the worker that is short
            return False
        app = self.app
        limits = [self.limit, app.effective_max_db_connections(self.target),
                  app.effective_max_user_connections(self.user)]
        if shared.take(list(zip(self.slots(), limits, strict=True))):
            self.blocked = False
            return True
        self.blocked = True
        return False

    def slots(self) -> tuple[int, int, int]:
        found = self.shared_slots
        if found is None:
            shared = self.app.shared
            assert shared is not None
            found = self.shared_slots = (
                shared.slot(key_hash("pool", self.db_name, self.user)),
                shared.slot(key_hash("db servers", self.db_name)),
                shared.slot(key_hash("user servers", self.user)))
        return found

    def _uncount(self) -> None:
        shared = self.app.shared
        if shared is not None:
            shared.give(self.slots())

    def fails_fast(self) -> bool:
        """Whether a new client is told at once that server logins fail, rather than queued.

        Clients are held while a server that worked is briefly away (a restart) for up to
        server_login_retry; otherwise they are refused until the next attempt is due."""
        if not self.failing_since or self.total:
            return False
        now = self.app.loop.time()
        if self.held:
            return now - self.failing_since >= self.app.config.settings.server_login_retry
        return now < self.retry_at

    def grow(self) -> None:
        """Open connections while clients wait for more servers than are on the way."""
        wanted = len(self.waiting) + (1 if self.login_waiters and not self.total else 0)
        if wanted <= self.connecting:
            return
        while wanted > self.connecting and self.try_open():
            self.open_server()

    def open_server(self) -> None:
        if self.reserve_active and self.total >= self.app.effective_pool_size(self):
            log.info("%s taking connection from reserve_pool", self.name)  # PgBouncer's line
        server = self.app.new_server(self)
        self.login.add(server)
        self.app.server_counts.changed(self.db_name, self.user, 1)
        self.app.loop.create_task(server.connect())

    # ----------------------------------------------------------- client requests

    def request_welcome(self, client: ClientConn) -> None:
        """A client finished auth but the pool has not yet learned its server's parameters."""
        if self.welcome_params is not None:
            client.finish_login(self.welcome_params)
            return
        if self.fails_fast():
            self._refuse(client)
            return
        self.login_waiters.append(client)
        if self.idle:
            # A server exists (e.g. after a reload reset welcome); learn from it.
            self._learn_welcome(self.idle[-1])
            return
        if self.connecting == 0 and not self.paused and (
                self.try_open() or (self.total == 0 and self.app.shared is None
                                    and self.app.fleet is None and not self.failing_since)):
            # Over a limit of its own, one server still comes to learn the welcome; not
            # over the fleet's grant, which another process may be using.
            self.open_server()

    def full_apps(self) -> set[str]:
        """The applications whose clients hold max_app_connections of this pool's servers
        (counted from the linked servers, not kept as a tally)."""
        held: dict[str, int] = {}
        for server in self.active:
            client = server.client
            if client is not None:
                name = _application(client)
                held[name] = held.get(name, 0) + 1
        return {name for name, count in held.items() if count >= self.app_limit}

    def serves_at_once(self, client: ClientConn) -> bool:
        """Whether a client asking now would get a server without queueing behind others
        or waiting for one to be given back: an idle one, or room to open one while none
        is about to come back."""
        if self.paused or self.waiting:
            return False
        if self.app_limit and _application(client) in self.full_apps():
            return False
        # A server being reset (a session just ended) is free in a moment: no new one for
        # this login, which then goes the usual way.
        return bool(self.idle) or (not self.tested and not self.failing_since
                                   and self._may_open())

    def request(self, client: ClientConn) -> None:
        """A logged-in client has work and no server: link one now or queue the client."""
        if self.app_limit and _application(client) in self.full_apps():
            # Its application holds all it may: it waits for one of those to come back.
            self.waiting.append(client)
            client.start_wait()
            return
        if self.idle and not self.paused:
            # LIFO keeps the warmest connection busy and lets surplus ones age out;
            # server_round_robin spreads the load evenly instead.
            server = (self.idle[0] if self.app.config.settings.server_round_robin
                      else self.idle[-1])
            delay = self.check_delay
            if delay is not None and self.app.now - server.idle_since >= delay:
                self.waiting.appendleft(client)
                client.start_wait()
                self.move(server, TESTED)
                server.run_check()
                return
            self.move(server, ACTIVE)
            client.attach(server)
            return
        if self.failing_since and not self.paused and self.fails_fast():
            self._refuse(client)
            return
        self.waiting.append(client)
        client.start_wait()
        # Cheap test first: at the limit (the usual case under load) nothing can be opened.
        if (len(self.idle) + len(self.active) + len(self.login) < self.limit
                and not self.paused):
            self.grow()

    def _refuse(self, client: ClientConn) -> None:
        err = self.last_login_error
        if err is not None:
            # PgBouncer's words, with the server's own reason from the last attempt.
            client.fatal(ClientFatal(f"server login has been failing, cached error: "
                                     f"{err.message} (server_login_retry)",
                                     sqlstate=err.sqlstate))
        else:
            client.fatal(ClientFatal(
                "server login has been failing, try again later (server_login_retry)"))
        # No client may be waiting to bring the next attempt about: this one does.
        if self.try_open():
            self.open_server()

    def cancel_wait(self, client: ClientConn) -> None:
        with contextlib.suppress(ValueError):
            self.waiting.remove(client)
        with contextlib.suppress(ValueError):
            self.login_waiters.remove(client)

    # ----------------------------------------------------------- servers coming back

    def server_logged_in(self, server: ServerConn) -> None:
        self.alive_at = self.app.loop.time()
        if self.failing_since:
            log.info("%s server login works again, after %.1fs of failures", self.name,
                     self.alive_at - self.failing_since)
        self.forget_failure()
        # Given first (fresh, so even a server_lifetime of 0 lets it serve once): a
        # session-mode login that learns the welcome here may take this very server at once
        # (net/client_conn.finish_login).
        self.give(server)
        self._learn_welcome(server)
        if self.waiting:
            self.grow()  # the first after failures: open the rest the waiters need

    def forget_failure(self) -> None:
        self.last_login_failed_at = 0.0
        self.last_login_error = None
        self.failing_since = 0.0
        self.held = False
        self.retry_at = 0.0

    def _learn_welcome(self, server: ServerConn) -> None:
        if self.welcome_params is None:
            self.welcome_params = dict(server.initial_params)
        waiters, self.login_waiters = self.login_waiters, []
        for client in waiters:
            client.finish_login(self.welcome_params)

    def server_failed(self, server: ServerConn, error: ServerError) -> None:
        """A connection attempt failed (connect or login).

        A server that cannot be reached (refused, timed out), or worked until recently and
        says it is shutting down or starting up: the waiting clients are held (as PgBouncer,
        until their query_timeout or query_wait_timeout), and attempts come quickly at
        first, then further apart (an eighth of the time logins have failed, from 50 ms up
        to server_login_retry). A failed login (a wrong password, an unknown database)
        fails the waiting clients at once, and the next attempt comes after
        server_login_retry.
        """
        self._take_out(server)
        self._uncount()
        now = self.app.loop.time()
        retry = self.app.config.settings.server_login_retry
        if not self.failing_since:
            self.failing_since = now
            self.held = error.unreachable or (error.transient and (
                self.total > 0 or now - self.alive_at <= max(retry, _RECENT)))
            log.warning("%s server logins failing: %s; %s", self.name, error.message,
                        "clients wait for the server" if self.held
                        else "waiting clients are refused")
        elif self.held and not error.transient:
            self.held = False
        self.last_login_failed_at = now
        self.last_login_error = error
        if self.held:
            delay = min(max((now - self.failing_since) / 8, 0.05), max(retry, 0.05))
        else:
            delay = max(retry, 0.05)
        self.retry_at = now + delay
        if not self.held and all(s.dirty for s in (*self.login, *self.idle, *self.in_use())):
            # Nothing else will serve these clients soon (no server, or only ones to be
            # closed once free, as after RECONNECT): tell them now rather than hang.
            waiters = list(self.waiting) + self.login_waiters
            self.waiting.clear()
            self.login_waiters = []
            for client in waiters:
                client.fatal(ClientFatal(error.message, sqlstate=error.sqlstate))
        self._schedule_retry(delay)

    def _schedule_retry(self, delay: float) -> None:
        if self._retry_handle is not None:
            self._retry_handle.cancel()

        def retry() -> None:
            self._retry_handle = None
            self.retry_at = 0.0  # due now (a timer may fire a hair before its time)
            self.grow()

        self._retry_handle = self.app.loop.call_later(delay, retry)

    def release(self, server: ServerConn) -> None:
        """A server has no client: reset it if needed, then hand it on or park it."""
        if server.closed:
            return
        if server.cancels and server.held_for_cancel():
            # A cancel request for its last client's query is with the postmaster: no one
            # else gets the server (nor its reset query, which the cancel could hit) until
            # the postmaster is done; net/cancel.py releases it then.
            self.move(server, ACTIVE)
            return
        # Two attribute tests per release; should_close() words the reason.
        if (server.dirty or server.expires_at <= self.app.now) and server.should_close():
            server.close(server.close_reason)
            self.grow()
            return
        if server.listened:
            # A client's LISTEN ran here (net/listener.py): its channels go first; the rest
            # of the release follows the reply (internal_done).
            server.listened = False
            self.move(server, TESTED)
            server.run_internal(UNLISTEN, "UNLISTEN *")
            return
        if server.needs_reset:
            server.needs_reset = False
            query = self.app.config.settings.server_reset_query
            if not query and server.link is not None and server.link.needs_reset:
                query = "DEALLOCATE ALL"  # its statements are in doubt: start clean
            if query:
                self.move(server, TESTED)
                server.run_internal(RESET, query)
                return
        self.give(server)

    def internal_done(self, server: ServerConn, kind: Internal, ok: bool) -> None:
        """A query of the pooler's own (a reset, a check, a rollback) finished on an unlinked
        server: pass the server on, or drop it."""
        if not ok:
            server.close(kind.failure)
            self.grow()
            return
        if kind is RESET:
            server.statements_reset()
        elif kind is UNLISTEN:
            server.stream.mute = False
            self.release(server)
            return
        self.give(server)

    def give(self, server: ServerConn) -> None:
        """Hand a clean, unlinked server to the first waiter, or put it on the idle stack."""
        if server.cancels and server.held_for_cancel():
            self.move(server, ACTIVE)  # as in release: after a ROLLBACK of the pooler's own
            return
        if self.give_back:
            # Another worker's clients wait and this one holds more than its share.
            self.give_back = False
            server.close("released for another worker")
            return
        fleet = self.app.fleet
        if fleet is not None and fleet.of(self).over():
            server.close("closed: over the fleet's grant")  # its share went elsewhere
            return
        waiting = self.waiting
        blocked = self.full_apps() if self.app_limit and waiting else ()
        while waiting and not self.paused:
            try:
                client = waiting.popleft(blocked)
            except IndexError:
                break  # only applications at their limit wait
            if client.closed:
                continue
            client.stop_wait()
            self.move(server, ACTIVE)
            client.attach(server)
            return
        server.make_idle()
        self.move(server, IDLE)
        self.app.on_server_idle(self)

    def resume(self) -> None:
        """No longer paused: serve the clients that queued meanwhile."""
        if self.paused:
            return
        while self.waiting and self.idle:
            if self.app_limit and not set(self.waiting.apps()) - self.full_apps():
                break  # only applications at their limit wait
            self.give(self.idle[-1])
        self.grow()

    def server_gone(self, server: ServerConn) -> None:
        """A server connection that had logged in closed; forget it wherever it was."""
        self.alive_at = self.app.loop.time()
        self._take_out(server)
        self._uncount()
        if self.waiting:
            self.grow()

    def _take_out(self, server: ServerConn) -> None:
        """A closed server leaves whichever container still holds it."""
        before = self.total
        self.login.discard(server)
        self.active.discard(server)
        self.tested.discard(server)
        with contextlib.suppress(ValueError):
            self.idle.remove(server)
        if self.total < before:
            self.app.server_counts.changed(self.db_name, self.user, -1)
