"""Once-a-second housekeeping: timeouts, the reserve pool, min_pool_size, aging servers.

Strategy: the data path never reads a clock beyond one ``loop.time()`` per transaction edge;
everything time-based is decided here, by scanning pools and clients once per tick. The work
is proportional to the number of connections, which is fine at one tick a second.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ClientFatal
from ..log import log
from ..protocol import messages as m
from .states import READY

WAIT_NOTICE = m.notice_response(
    "No server connection available in postgres backend, client being queued")

if TYPE_CHECKING:
    from ..app import Application
    from ..net.client_conn import ClientConn
    from .pool import Pool


def _for_user(app: Application, user: str, name: str) -> float:
    """A timeout as PgBouncer applies it: the [users] entry's when set above 0, else the
    global one."""
    entry = app.config.users.get(user)
    value = getattr(entry, name) if entry is not None else None
    return float(value) if value else float(getattr(app.config.settings, name))


def _wait_timeouts(app: Application, pool: Pool, now: float) -> None:
    """Waiting clients: query_wait_notify's notice, query_timeout and query_wait_timeout (the
    [users] entry's, then the [databases] entry's, then the global value), all counted from
    when the client began to wait."""
    notify = app.config.settings.query_wait_notify
    for client in [*pool.login_waiters, *pool.waiting]:
        # A login waiter (held while the server cannot be reached) waits since it came.
        waiting = client.waiting
        age = now - (client.wait_started if waiting else client.connected_at)
        if notify > 0 and age >= notify and waiting and not client.wait_notified:
            # Nothing is on its way to a waiting client: a notice fits between messages.
            client.wait_notified = True
            client.transport.write(WAIT_NOTICE)
        query = _for_user(app, client.user, "query_timeout")
        if query > 0 and age >= query:
            client.fatal(ClientFatal("query_timeout"), log_as="query_timeout")
            continue
        wait = float(app.layered(client.user, pool.target, "query_wait_timeout",
                                 "query_wait_timeout", "query_wait_timeout"))
        if wait > 0 and age >= wait:
            app.metrics.events.wait_timed_out(pool.db_name)
            client.fatal(ClientFatal("query_wait_timeout"), log_as="query_wait_timeout")


def _forced_user_pools(app: Application) -> None:
    """A database with a forced user and a min_pool_size gets its pool at load, with no
    client needed (as PgBouncer): the loop below then keeps it at min_pool_size."""
    s = app.config.settings
    for name, entry in app.config.databases.items():
        if name == "*" or not entry.user or (name, entry.user) in app.pools:
            continue
        size = entry.min_pool_size if entry.min_pool_size is not None else s.min_pool_size
        if size > 0:
            app.get_pool(name, entry.user)


def _idle_pools(app: Application, now: float) -> None:
    """pool_idle_timeout: a pool with no server, no client and no min_pool_size, whose last
    server went that long ago, is dropped (a client that comes later makes a new one). A
    pool whose logins fail keeps its retry timer, so it stays until they work again."""
    timeout = app.config.settings.pool_idle_timeout
    candidates = [key for key, pool in app.pools.items()
                  if not pool.total and not pool.waiting and not pool.login_waiters
                  and not pool.failing_since
                  and now - pool.alive_at >= timeout
                  and not app.effective_min_pool_size(pool)]
    if not candidates:
        return
    in_use = {client.pool for client in app.clients}
    for key in candidates:
        pool = app.pools[key]
        if pool not in in_use:
            log.info("%s cleaning up idle pool", pool.name)
            del app.pools[key]


def tick(app: Application) -> None:
    now = app.loop.time()
    s = app.config.settings
    if not app.shutting_down:
        _forced_user_pools(app)
        if s.pool_idle_timeout > 0:
            _idle_pools(app, now)
    for pool in list(app.pools.values()):
        # Waiting clients: the wait timeouts, and the reserve pool after reserve_pool_timeout.
        if pool.login_waiters:
            _wait_timeouts(app, pool, now)
        if pool.waiting:
            oldest = pool.waiting[0]
            if not pool.login_waiters:
                _wait_timeouts(app, pool, now)
            if (not pool.reserve_active and app.effective_reserve_size(pool) > 0
                    and now - oldest.wait_started >= s.reserve_pool_timeout):
                pool.set_reserve(True)
            if not pool.paused:
                pool.grow()
        elif pool.reserve_active and pool.total <= app.effective_pool_size(pool):
            pool.set_reserve(False)
        # Idle servers: lifetime, idle timeout above min_pool_size.
        min_size = app.effective_min_pool_size(pool)
        for server in list(pool.idle):
            if server.should_close():
                server.close(server.close_reason)
            elif (s.server_idle_timeout > 0 and now - server.idle_since >= s.server_idle_timeout
                  and pool.total > min_size):
                server.close("server idle timeout")
        if min_size and not app.shutting_down and not pool.paused:
            while pool.total < min_size and pool.try_open():
                pool.open_server()
    for client in list(app.clients):
        if client.closed or client.state != READY:
            continue  # client_login_timeout has its own timer
        _client_timeouts(app, client, now)


def _client_timeouts(app: Application, client: ClientConn, now: float) -> None:
    """The timeouts of a logged-in client, each the [users] entry's or the global one.

    As in PgBouncer, a timeout of a client linked to a server closes that server first (its
    log line names the reason), then the client, with FATAL 08P01 and the same words."""
    user = client.user
    linked = client.server
    if linked is None:
        idle = _for_user(app, user, "client_idle_timeout")
        if (idle > 0 and not client.waiting and not client.pending
                and now - client.state_since >= idle):
            client.fatal(ClientFatal("client_idle_timeout"), log_as="client_idle_timeout")
        return
    if client.lease.outstanding:
        query = _for_user(app, user, "query_timeout")
        if query > 0 and now - client.state_since >= query:
            client.timed_out("query timeout")
            return
    elif linked.stream.status != 73:  # idle in a transaction
        idle_xact = _for_user(app, user, "idle_transaction_timeout")
        if idle_xact > 0 and now - client.state_since >= idle_xact:
            client.timed_out("idle transaction timeout")
            return
    xact = _for_user(app, user, "transaction_timeout")
    if xact > 0 and client.xact_since and now - client.xact_since >= xact:
        client.timed_out("transaction timeout")
