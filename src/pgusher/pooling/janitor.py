"""Once-a-second housekeeping: timeouts, the reserve pool, min_pool_size, aging servers.

Strategy: the data path never reads a clock beyond one ``loop.time()`` per transaction edge;
everything time-based is decided here, by scanning pools and clients once per tick. The work
is proportional to the number of connections, which is fine at one tick a second.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ClientFatal
from .states import AUTH, LOGIN_WAIT, READY, STARTUP

if TYPE_CHECKING:
    from ..app import Application


def tick(app: Application) -> None:
    now = app.loop.time()
    s = app.config.settings
    for pool in list(app.pools.values()):
        # Waiting clients: query_wait_timeout, and the reserve pool after reserve_pool_timeout.
        if pool.waiting:
            oldest = pool.waiting[0]
            if s.query_wait_timeout > 0:
                for client in list(pool.waiting):
                    if now - client.wait_started >= s.query_wait_timeout:
                        app.metrics.events.wait_timed_out(pool.db_name)
                        client.fatal(ClientFatal("query_wait_timeout", sqlstate="08P01"),
                                     log_as="query_wait_timeout")
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
        if client.closed:
            continue
        state = client.state
        if state in (STARTUP, AUTH, LOGIN_WAIT):
            continue  # client_login_timeout has its own timer
        if state != READY:
            continue
        linked = client.server
        if linked is None:
            if (s.client_idle_timeout > 0 and not client.waiting and not client.pending
                    and now - client.state_since >= s.client_idle_timeout):
                client.fatal(ClientFatal("client_idle_timeout", sqlstate="08P01"),
                             log_as="client_idle_timeout")
            continue
        if client.lease.outstanding:
            if s.query_timeout > 0 and now - client.state_since >= s.query_timeout:
                client.fatal(ClientFatal("query_timeout", sqlstate="57014"),
                             log_as="query_timeout")
        elif (linked.stream.status != 73 and s.idle_transaction_timeout > 0
              and now - client.state_since >= s.idle_transaction_timeout):
            client.fatal(ClientFatal("idle transaction timeout", sqlstate="25P03"),
                         log_as="idle transaction timeout")
        if (s.transaction_timeout > 0 and client.xact_since and not client.closed
                and now - client.xact_since >= s.transaction_timeout):
            client.fatal(ClientFatal("transaction timeout", sqlstate="25P04"),
                         log_as="transaction timeout")
