"""Cancel requests: the keys clients get, where a request goes, and forwarding it.

A CancelRequest arrives on a fresh connection carrying the pooler's own key for the client.
The pooler looks the client up and, only if it is running something, opens a fresh socket to
that client's server and sends the server's own key. A stale key, or a client that is idle,
cancels nothing, so a late cancel can never hit another client's query.

Keys name the process that issued them, so a request that reaches another process can be
passed on. Read as the 8 bytes of BackendKeyData (process id, then secret):

- byte 0: its top bit is clear, so the process id is positive;
- bytes 1 and 2: ``peer_id`` (low byte first) when peering is on, as PgBouncer lays it out,
  so pgusher and PgBouncer processes can be peers of each other;
- byte 3: the worker number (1-based) when ``workers`` > 1;
- byte 7: with peering on, its two low bits are a hop count (3 at first) that each
  forwarding lowers, so a request cannot circle between misconfigured peers for ever;
- everything else is random.
"""

from __future__ import annotations

import asyncio
import secrets
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..log import log
from ..protocol import messages as m

if TYPE_CHECKING:
    from ..app import Application
    from .server_conn import ServerConn

_KEY = struct.Struct("!ii")
TTL_MASK = 0x03


def make_key(peer_id: int, worker: int) -> tuple[int, int]:
    raw = bytearray(secrets.token_bytes(8))
    raw[0] &= 0x7F
    if peer_id:
        raw[1] = peer_id & 0xFF
        raw[2] = (peer_id >> 8) & 0xFF
        raw[7] |= TTL_MASK
    if worker:
        raw[3] = worker
    pid, key = _KEY.unpack(raw)
    return pid, key


@dataclass(frozen=True)
class Route:
    """Where a cancel request for another process goes ("" = drop it)."""

    address: str  # "unix:PATH" or "HOST:PORT"
    pid: int
    key: int
    why: str


def route(app: Application, pid: int, key: int) -> Route | None:
    """None when the request is for this process; otherwise where to send it."""
    raw = bytearray(_KEY.pack(pid, key))
    own_peer = app.config.settings.peer_id
    if own_peer:
        peer_id = raw[1] | (raw[2] << 8)
        if peer_id and peer_id != own_peer:
            if not raw[7] & TTL_MASK:
                return Route("", pid, key, "its hop count was used up")
            peer = app.config.peers.get(peer_id)
            if peer is None:
                return Route("", pid, key, f"there is no peer {peer_id} in [peers]")
            raw[7] -= 1
            pid, key = _KEY.unpack(raw)
            return Route(peer_address(app, peer.host, peer.port), pid, key, f"peer {peer_id}")
    worker = app.worker
    if worker is not None:
        number = raw[3]
        if 1 <= number <= worker.count and number != worker.number:
            return Route("unix:" + worker.sibling_path(number - 1), pid, key,
                         f"worker {number}")
    return None


def peer_address(app: Application, host: str | None, port: int) -> str:
    if not host or host.startswith("/"):
        directory = host or app.config.settings.unix_socket_dir or "/tmp"
        return f"unix:{directory}/.s.PGSQL.{port}"
    return f"{host}:{port}"


async def forward(app: Application, to: Route, pid: int, key: int) -> None:
    """Pass a cancel request for another process on, with the key it should carry."""
    if not to.address:
        log.info("cancel request dropped: %s", to.why)
        return
    log.debug("forwarding cancel request to %s", to.why)
    await _deliver(app, to.address, m.cancel_request(to.pid, to.key), to.why)


async def send_cancel(app: Application, server: ServerConn) -> None:
    await _deliver(app, server.addr, m.cancel_request(server.pid, server.key), server.ident)


async def _deliver(app: Application, addr: str, payload: bytes, who: str) -> None:
    settings = app.config.settings
    timeout = settings.cancel_wait_timeout or settings.server_connect_timeout or None
    try:
        if addr.startswith("unix:"):
            coro = asyncio.open_unix_connection(addr[5:])
        else:
            host, _, port = addr.rpartition(":")
            coro = asyncio.open_connection(host.strip("[]"), int(port))
        reader, writer = await asyncio.wait_for(coro, timeout)
        writer.write(payload)
        await writer.drain()
        # The receiver closes the connection once it has read the request.
        await asyncio.wait_for(reader.read(), timeout)
        writer.close()
    except (OSError, TimeoutError) as exc:
        log.warning("%s could not send cancel request: %s", who, exc)
