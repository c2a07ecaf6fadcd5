"""Cancel requests: the keys clients get, where a request goes, and forwarding it.

A CancelRequest arrives on a fresh connection carrying the pooler's own key for the client.
The pooler looks the client up and, only if it is running something, opens a fresh socket to
that client's server's postmaster and sends the server's own key. A stale key, or a client that
is idle, cancels nothing.

The promise a direct PostgreSQL makes, and clients rely on (asyncpg, libpq's PQcancel): once the
cancel connection is closed, the backend has been signalled, so the client's next query cannot
be hit. The postmaster signals the backend before it closes the connection, so the pooler closes
the client's cancel connection only after the postmaster closed its own (or the request was
dropped). A cancel that goes through a sibling worker or a peer keeps the same order, since each
hop waits for the next one to close.

A cancel is meant for the query running when it arrived, never a later one. An attempt is
therefore tied to the client and the server link, and:

- while its connection to the postmaster is still being opened, nothing has reached the server:
  when the client's work ends (ReadyForQuery with nothing outstanding) or the link goes, the
  attempt is dropped, and a server given back to the pool is free at once;
- once the request is written, it cannot be taken back: the postmaster will signal that backend
  whatever runs on it by then. A server released in that window is kept out of the pool
  ("being canceled", as PgBouncer has it) until the postmaster has closed the connection, and
  only then handed to the next client. A backend that got the signal while idle discards it when
  it reads its next query, so that query is safe.

Keys name the process that issued them, so a request that reaches another process can be
passed on. Read as the 8 bytes of BackendKeyData (process id, then secret):

- byte 0: its top bit is clear, so the process id is positive;
- bytes 1 and 2: ``peer_id`` (low byte first) when peering is on, as PgBouncer lays it out,
  so pgusher and PgBouncer processes can be peers of each other;
- byte 4 (the secret's first byte): the worker number (1-based) when ``workers`` > 1, so it
  routes keys whose process id is a real backend's too;
- byte 7: with peering on, its two low bits are a hop count (3 at first) that each
  forwarding lowers, so a request cannot circle between misconfigured peers for ever;
- everything else is random.

In session mode without peering a client is given its server's real process id (so
``pg_backend_pid()``, ``pg_terminate_backend()`` and the pid in a notification match what it
was told); the secret is still the pooler's own, so the key cancels nothing but that client's
own queries, through the pooler.
"""

from __future__ import annotations

import asyncio
import secrets
import struct
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..log import log
from ..protocol import messages as m

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..app import Application
    from .client_conn import ClientConn
    from .server_conn import ServerConn

_KEY = struct.Struct("!ii")
_PID = struct.Struct("!i")
TTL_MASK = 0x03

# The loop keeps only weak references to tasks: the cancels on their way are kept here.
_tasks: set[asyncio.Task[None]] = set()


def _spawn(app: Application, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    task = app.loop.create_task(coro)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return task


def make_key(peer_id: int, worker: int, pid: int = 0) -> tuple[int, int]:
    """A fresh key; ``pid``, when given, is a real backend's process id to keep."""
    raw = bytearray(secrets.token_bytes(8))
    if pid:
        raw[0:4] = _PID.pack(pid)
    else:
        raw[0] &= 0x7F
        if peer_id:
            raw[1] = peer_id & 0xFF
            raw[2] = (peer_id >> 8) & 0xFF
            raw[7] |= TTL_MASK
    if worker:
        raw[4] = worker
    shown_pid, key = _KEY.unpack(raw)
    return shown_pid, key


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
        number = raw[4]
        if 1 <= number <= worker.count and number != worker.number:
            return Route("unix:" + worker.sibling_path(number - 1), pid, key,
                         f"worker {number}")
    return None


def peer_address(app: Application, host: str | None, port: int) -> str:
    if not host or host.startswith("/"):
        directory = host or app.config.settings.unix_socket_dir or "/tmp"
        return f"unix:{directory}/.s.PGSQL.{port}"
    return f"{host}:{port}"


def _timeout(app: Application) -> float | None:
    settings = app.config.settings
    return settings.cancel_wait_timeout or settings.server_connect_timeout or None


async def _open(addr: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if addr.startswith("unix:"):
        return await asyncio.open_unix_connection(addr[5:])
    host, _, port = addr.rpartition(":")
    return await asyncio.open_connection(host.strip("[]"), int(port))


def forward(app: Application, to: Route, done: Callable[[], None]) -> None:
    """Pass a cancel request for another process on; ``done`` runs once the receiver has
    closed the connection, which it does only after its own delivery."""
    task = _spawn(app, _forward(app, to))
    task.add_done_callback(lambda _: done())


async def _forward(app: Application, to: Route) -> None:
    if not to.address:
        log.info("cancel request dropped: %s", to.why)
        return
    log.debug("forwarding cancel request to %s", to.why)
    writer = None
    try:
        async with asyncio.timeout(_timeout(app)):
            reader, writer = await _open(to.address)
            writer.write(m.cancel_request(to.pid, to.key))
            await reader.read()
    except (OSError, TimeoutError) as exc:
        log.warning("%s could not send cancel request: %s", to.why, exc or "timed out")
    finally:
        if writer is not None:
            writer.close()


# The states of an attempt.
CONNECTING = "connecting"  # the connection to the postmaster is being opened: nothing sent
SENT = "sent"  # written: the postmaster will signal the backend, whatever runs on it then
DONE = "done"  # acknowledged (the postmaster closed), failed or dropped


class Attempt:
    """One cancel request on its way to a server's postmaster, for one client's work."""

    __slots__ = ("client", "done", "server", "state")

    def __init__(self, client: ClientConn, server: ServerConn, done: Callable[[], None]) -> None:
        self.client = client
        self.server = server
        self.done = done  # closes the client's cancel connection
        self.state = CONNECTING

    def wanted(self) -> bool:
        """The work it was meant for still runs on the same link."""
        server = self.server
        client = self.client
        return (not server.closed and server.client is client and client.server is server
                and client.lease.outstanding > 0 and not client.closed)


def send_cancel(app: Application, client: ClientConn, server: ServerConn,
                done: Callable[[], None]) -> None:
    """Cancel what ``client`` runs on ``server``; ``done`` runs when the attempt is over."""
    attempt = Attempt(client, server, done)
    server.cancels.append(attempt)
    _spawn(app, _deliver(app, attempt))


async def _deliver(app: Application, attempt: Attempt) -> None:
    server = attempt.server
    writer = None
    sure = True  # the request certainly reached the postmaster, or certainly did not
    try:
        async with asyncio.timeout(_timeout(app)):
            reader, writer = await _open(server.addr)
            if attempt.state is not CONNECTING or not attempt.wanted():
                # The query ended, or the server went to another client, while the
                # connection was being opened: this cancel is for nothing that runs now.
                _drop(attempt, "the query finished first")
                return
            attempt.state = SENT
            log.info("%s cancel request forwarded to server", attempt.client.prefix())
            writer.write(m.cancel_request(server.pid, server.key))
            # The postmaster closes the connection once it has signalled the backend.
            await reader.read()
    except (OSError, TimeoutError) as exc:
        sure = attempt.state is not SENT
        log.warning("%s could not send cancel request: %s", server.ident, exc or "timed out")
    finally:
        if writer is not None:
            writer.close()
        _finish(attempt, sure)


def _drop(attempt: Attempt, why: str) -> None:
    if attempt.state is DONE:
        return
    attempt.state = DONE
    server = attempt.server
    if attempt in server.cancels:
        server.cancels.remove(attempt)
    log.debug("%s cancel request dropped: %s", attempt.client.prefix(), why)
    attempt.done()


def _finish(attempt: Attempt, sure: bool) -> None:
    if attempt.state is DONE:
        return  # dropped before anything was sent
    attempt.state = DONE
    server = attempt.server
    if attempt in server.cancels:
        server.cancels.remove(attempt)
    attempt.done()
    if not server.cancel_hold or server.closed:
        return
    if not sure:
        # Written, but the postmaster never said it was done: it may still signal the
        # backend, so the server must not serve anyone else.
        server.cancel_hold = False
        server.close("cancel request not acknowledged by the server")
        server.pool.grow()
        return
    if any(a.state is SENT for a in server.cancels):
        return
    server.cancel_hold = False
    server.pool.release(server)


def settle(server: ServerConn) -> None:
    """The server's link changed or its client's work ended: drop what nothing sent yet."""
    for attempt in list(server.cancels):
        if attempt.state is CONNECTING and not attempt.wanted():
            _drop(attempt, "the query finished first")


def holds(server: ServerConn) -> bool:
    """The server is about to go back to the pool: must it wait?

    Of the two ways to keep a late cancel off the next client, each is used where it is
    exact. An attempt still connecting is dropped rather than waited for: nothing of it has
    reached the server, and its connect may take up to cancel_wait_timeout (an unreachable
    postmaster, a full listen queue), which would idle the server meanwhile. An attempt
    already written cannot be taken back, so it keeps the server out of the pool until the
    postmaster has closed the connection, which it does right after signalling the backend.
    """
    settle(server)
    if any(a.state is SENT for a in server.cancels):
        if not server.cancel_hold:
            server.cancel_hold = True
            log.debug("%s waits for a cancel request in flight", server.ident)
        return True
    return False
