"""Connections of the pooler's own, outside the pools: the auth_query lookups, the LISTEN
connections and the fleet's coordination connections.

Strategy: they reach a database target as the pool's servers do (a Unix socket, or TCP with
the server-side TLS rules, within server_connect_timeout) and log in through the same sans-IO
:class:`ServerLogin`; this module holds those two steps once, so each kind of connection
keeps only what it does after its login.
"""

from __future__ import annotations

import asyncio
import functools
from typing import TYPE_CHECKING

from ..auth.server_login import LoginDone, LoginFailed, Send, ServerLogin
from ..errors import ServerError
from .client_auth import scram_login
from .tls import connect_server

if TYPE_CHECKING:
    from ..app import Application, DbTarget
    from ..pooling.pool import Pool


async def connect_to(app: Application, protocol: asyncio.Protocol, target: DbTarget) -> None:
    """Connect ``protocol`` to the target's next address. Raises ServerError (TLS refused
    where it is required) or OSError (TimeoutError included)."""
    s = app.config.settings
    host, port = target.next_address()
    timeout = s.server_connect_timeout or None
    if host is None or host.startswith("/"):
        directory = host or s.unix_socket_dir or "/tmp"
        await asyncio.wait_for(app.loop.create_unix_connection(
            lambda: protocol, f"{directory}/.s.PGSQL.{port}"), timeout)
    else:
        await asyncio.wait_for(connect_server(app.loop, protocol, host, port, app.tls),
                               timeout)


def pool_login(app: Application, pool: Pool, who: str) -> ServerLogin:
    """A login as the pool's user, with the pool's password (or SCRAM keys)."""
    user = pool.user
    return ServerLogin(user, pool.target.dbname, pool.target.startup_params, pool.password,
                       functools.partial(scram_login, app, user),
                       who=f'{who} as user "{user}"')


def login_step(login: ServerLogin, data: bytes,
               transport: asyncio.Transport) -> tuple[bool, bytes, ServerError | None]:
    """Feed received bytes to a login, sending what it answers: (done, the bytes after its
    ReadyForQuery, the error if it failed)."""
    for action in login.feed(data):
        if isinstance(action, Send):
            transport.write(action.data)
        elif isinstance(action, LoginFailed):
            return False, b"", ServerError(f"login failed: {action.error.message}")
        elif isinstance(action, LoginDone):
            return True, login.reader.take_rest(), None
    return False, b"", None
