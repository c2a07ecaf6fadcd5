"""A raw protocol-3 client for tests that send what no driver would.

Replies are summed up as tuples: the type letter alone for most messages, the values for
DataRow, and ``(type, severity, sqlstate, message)`` for ErrorResponse and NoticeResponse, so a
test can compare what the pooler answers with what PostgreSQL itself answers to the same bytes.
The module-level functions below it drive a plain socket step by step (logins, queries,
CancelRequests) for tests that time what happens on the wire.
"""

from __future__ import annotations

import socket
import struct
import time

Reply = tuple[str, ...]

EOF: Reply = ("EOF",)


def message(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def startup_packet(user: str = "postgres", database: str = "app") -> bytes:
    body = (struct.pack("!i", 196608) + b"user\0" + user.encode() + b"\0database\0"
            + database.encode() + b"\0\0")
    return struct.pack("!i", len(body) + 4) + body


def query(sql: str) -> bytes:
    return message(b"Q", sql.encode() + b"\0")


SYNC = message(b"S")
TERMINATE = message(b"X")


def _summary(kind: bytes, body: bytes) -> Reply:
    if kind in (b"E", b"N"):
        fields = {part[:1].decode(): part[1:].decode("utf-8", "replace")
                  for part in body.split(b"\0") if part}
        return (kind.decode(), fields.get("S", ""), fields.get("C", ""), fields.get("M", ""))
    if kind == b"Z":
        return ("Z", body.decode())
    if kind == b"D":  # DataRow: its values as text, NULL as None
        values: list[str] = []
        pos = 2
        for _ in range(struct.unpack_from("!h", body)[0]):
            size = struct.unpack_from("!i", body, pos)[0]
            pos += 4
            values.append("NULL" if size < 0 else body[pos:pos + size].decode())
            pos += max(size, 0)
        return ("D", *values)
    return (kind.decode(),)


class RawConn:
    """One socket, read message by message."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    @classmethod
    def tcp(cls, port: int, host: str = "127.0.0.1", timeout: float = 10) -> RawConn:
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(sock)

    @classmethod
    def unix(cls, path: str, timeout: float = 10) -> RawConn:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(path)
        return cls(sock)

    def login(self, user: str = "postgres", database: str = "app") -> None:
        """Start up with a user that needs no password; fail on any error."""
        self.send(startup_packet(user, database))
        replies = self.read_until_ready()
        assert replies[-1][0] == "Z" and not [r for r in replies if r[0] == "E"], replies

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_in_pieces(self, data: bytes, size: int = 1, pause: float = 0.002) -> None:
        """``size`` bytes per write, with a pause between, so the peer reads them apart."""
        for i in range(0, len(data), size):
            self.sock.sendall(data[i:i + size])
            time.sleep(pause)

    def read_message(self) -> Reply:
        """The next message, or EOF when the peer closed."""
        while len(self.buf) < 5 or len(self.buf) < 1 + struct.unpack_from("!i", self.buf, 1)[0]:
            chunk = self.sock.recv(65536)
            if not chunk:
                return EOF
            self.buf += chunk
        end = 1 + struct.unpack_from("!i", self.buf, 1)[0]
        kind, body, self.buf = self.buf[:1], self.buf[5:end], self.buf[end:]
        return _summary(kind, body)

    def read_until_ready(self) -> list[Reply]:
        """Messages up to and including ReadyForQuery, or up to EOF."""
        replies: list[Reply] = []
        while True:
            reply = self.read_message()
            replies.append(reply)
            if reply[0] in ("Z", "EOF"):
                return replies

    def read_to_eof(self) -> list[Reply]:
        replies: list[Reply] = []
        while True:
            reply = self.read_message()
            replies.append(reply)
            if reply == EOF:
                return replies

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawConn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- plain-socket helpers

CANCEL_CODE = 80877102


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
