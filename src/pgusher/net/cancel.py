"""Forward a cancel request to the server connection currently serving a client.

A CancelRequest arrives on a fresh connection carrying the pooler's own key for the client.
The pooler looks the client up and, only if it is running something, opens a fresh socket to
that client's server and sends the server's own key. A stale key, or a client that is idle,
cancels nothing, so a late cancel can never hit another client's query.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ..log import log
from ..protocol import messages as m

if TYPE_CHECKING:
    from ..app import Application
    from .server_conn import ServerConn


async def send_cancel(app: Application, server: ServerConn) -> None:
    addr = server.addr
    payload = m.cancel_request(server.pid, server.key)
    settings = app.config.settings
    timeout = settings.cancel_wait_timeout or settings.server_connect_timeout or None
    try:
        if addr.startswith("unix:"):
            coro = asyncio.open_unix_connection(addr[5:])
        else:
            host, _, port = addr.rpartition(":")
            coro = asyncio.open_connection(host, int(port))
        reader, writer = await asyncio.wait_for(coro, timeout)
        writer.write(payload)
        await writer.drain()
        # The server closes the connection once it has read the request.
        await asyncio.wait_for(reader.read(), timeout)
        writer.close()
    except (OSError, TimeoutError) as exc:
        log.warning("%s could not send cancel request: %s", server.ident, exc)
