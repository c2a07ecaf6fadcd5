"""The built-in HTTP endpoint: /metrics, /health, /ready, /api/snapshot and the dashboard.

Strategy: a deliberately small HTTP/1.1 server on the pooler's own loop (GET and HEAD, one
request per connection, bounded request size and read time). It serves operators and scrapers
a few times a minute, so simplicity beats throughput; it never touches the data path, and
every page is built from the same scan the console uses. The text of /metrics and
/api/snapshot comes from the two functions the Application passes in (admin/cluster.py's, which
ask every worker when there are several): this package sits below admin and does not import it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ..log import log
from . import prometheus
from .dashboard import PAGE

if TYPE_CHECKING:
    from ..app import Application

MAX_REQUEST = 16 * 1024
READ_TIMEOUT = 10.0
PROBE_TIMEOUT = 1.0

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            503: "Service Unavailable"}


async def start_http(app: Application, host: str, port: int,
                     metrics_text: Callable[[Application], Awaitable[str]],
                     snapshot: Callable[[Application], Awaitable[dict[str, object]]]
                     ) -> asyncio.AbstractServer:
    """Listen on host:port; /metrics and /api/snapshot are ``metrics_text(app)`` and
    ``snapshot(app)``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await _serve_one(app, reader, writer, metrics_text, snapshot)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    # With several workers each binds the port (SO_REUSEPORT) and answers for all of them.
    server = await asyncio.start_server(handle, host, port, limit=MAX_REQUEST,
                                        reuse_port=app.worker is not None)
    for sock in server.sockets:
        name = sock.getsockname()
        log.info("http endpoint listening on %s:%s", name[0], name[1])
    return server


async def _serve_one(app: Application, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter,
                     metrics_text: Callable[[Application], Awaitable[str]],
                     snapshot: Callable[[Application], Awaitable[dict[str, object]]]) -> None:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if sep:  # a repeated header is one list, as HTTP allows for Accept
            key = name.strip().lower()
            headers[key] = (headers[key] + "," if key in headers else "") + value.strip()
    parts = request_line.split()
    if len(parts) != 3:
        _respond(writer, 400, "text/plain", b"bad request\n", False)
        return
    method, target, _version = parts
    if method not in ("GET", "HEAD"):
        _respond(writer, 405, "text/plain", b"only GET and HEAD\n", False)
        return
    path = target.split("?", 1)[0]
    head_only = method == "HEAD"
    if path == "/metrics":
        text = await metrics_text(app)
        if prometheus.wants_openmetrics(headers.get("accept", "")):
            _respond(writer, 200, prometheus.OPENMETRICS_TYPE,
                     prometheus.to_openmetrics(text).encode(), head_only)
        else:
            _respond(writer, 200, prometheus.CONTENT_TYPE, text.encode(), head_only)
    elif path == "/health":
        _respond(writer, 200, "text/plain", b"ok\n", head_only)
    elif path == "/ready":
        ready, reason = await readiness(app)
        body = json.dumps({"ready": ready, "reason": reason}).encode() + b"\n"
        _respond(writer, 200 if ready else 503, "application/json", body, head_only)
    elif path in ("/api/snapshot", "/snapshot.json"):
        body = json.dumps(await snapshot(app)).encode()
        _respond(writer, 200, "application/json", body, head_only)
    elif path in ("/", "/dashboard"):
        _respond(writer, 200, "text/html; charset=utf-8", PAGE.encode(), head_only)
    else:
        _respond(writer, 404, "text/plain", b"not found\n", head_only)
    await writer.drain()


def _respond(writer: asyncio.StreamWriter, status: int, ctype: str, body: bytes,
             head_only: bool) -> None:
    header = (f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {ctype}\r\n"
              f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n"
              "Vary: Accept\r\nConnection: close\r\n\r\n")
    writer.write(header.encode() + (b"" if head_only else body))


async def readiness(app: Application) -> tuple[bool, str]:
    """Ready when at least one pool can reach its server.

    A pool holding a logged-in server connection proves it at no cost. Failing that (a fresh
    pooler has no pools yet), each configured server is probed with a plain connect.
    """
    if app.shutting_down:
        return False, "shutting down"
    for pool in app.pools.values():
        if (pool.idle or pool.active) and not pool.last_login_failed_at:
            return True, f"pool {pool.name} has server connections"
    settings = app.config.settings
    tried: set[tuple[str | None, int]] = set()
    for name in sorted(app.config.databases):
        target = app.find_target(name) if name != "*" else None
        if target is None:
            continue
        for host in target.hosts:
            if (host, target.port) in tried:
                continue
            tried.add((host, target.port))
            if await _probe(host, target.port, settings.unix_socket_dir):
                return True, f"database {name} reachable at {host or 'unix socket'}"
    return False, "no configured server is reachable"


async def _probe(host: str | None, port: int, socket_dir: str) -> bool:
    try:
        if host is None or host.startswith("/"):
            path = f"{host or socket_dir or '/tmp'}/.s.PGSQL.{port}"
            conn = asyncio.open_unix_connection(path)
        else:
            conn = asyncio.open_connection(host, port)
        _reader, writer = await asyncio.wait_for(conn, PROBE_TIMEOUT)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
