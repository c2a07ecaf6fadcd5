"""The PostgreSQL wire protocol by hand, for tests that must see exactly what goes over it."""

from __future__ import annotations

import socket
import struct
import time

CANCEL_CODE = 80877102

__all__ = ["CANCEL_CODE", "exactly", "login", "open_cancel", "query_result", "read_message",
           "send_query", "wait_closed"]


def exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("connection closed")
        data += chunk
    return data


def read_message(sock: socket.socket) -> tuple[bytes, bytes]:
    kind, length = struct.unpack("!ci", exactly(sock, 5))
    return kind, exactly(sock, length - 4)


def login(host: str, port: int, user: str = "postgres", dbname: str = "app",
          **params: str) -> tuple[socket.socket, tuple[int, int]]:
    """A connection that needs no password (trust); the cancel key it was given."""
    sock = socket.create_connection((host, port), timeout=30)
    fields = {"user": user, "database": dbname, **params}
    body = struct.pack("!i", 196608)
    body += b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in fields.items()) + b"\0"
    sock.sendall(struct.pack("!i", len(body) + 4) + body)
    key = (0, 0)
    while True:
        kind, payload = read_message(sock)
        if kind == b"K":
            key = struct.unpack("!ii", payload)
        elif kind == b"E":
            raise AssertionError(payload)
        elif kind == b"Z":
            return sock, key


def send_query(sock: socket.socket, sql: str) -> None:
    q = sql.encode() + b"\0"
    sock.sendall(b"Q" + struct.pack("!i", len(q) + 4) + q)


def error_fields(payload: bytes) -> dict[str, str]:
    return {f[:1].decode(): f[1:].decode() for f in payload.split(b"\0") if f}


def query_result(sock: socket.socket) -> tuple[list[list[bytes | None]], str | None]:
    """Rows and the SQLSTATE of an error (None without one), up to ReadyForQuery."""
    rows: list[list[bytes | None]] = []
    sqlstate = None
    while True:
        kind, payload = read_message(sock)
        if kind == b"D":
            count = struct.unpack_from("!h", payload)[0]
            pos, row = 2, []
            for _ in range(count):
                size = struct.unpack_from("!i", payload, pos)[0]
                pos += 4
                row.append(None if size < 0 else payload[pos:pos + size])
                pos += max(size, 0)
            rows.append(row)
        elif kind == b"E":
            sqlstate = error_fields(payload)["C"]
        elif kind == b"Z":
            return rows, sqlstate


def open_cancel(host: str, port: int, key: tuple[int, int]) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=30)
    sock.sendall(struct.pack("!iiii", 16, CANCEL_CODE, *key))
    return sock


def wait_closed(sock: socket.socket) -> float:
    """Block until the peer closes; the time.time() it did."""
    with sock:
        while sock.recv(64):
            pass
    return time.time()
