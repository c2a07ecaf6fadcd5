"""Asking the other workers: a small console client over their private unix sockets.

Strategy: a sibling is asked exactly what the operator asked (the console command's text)
over a connection to its private socket, where it answers for itself alone. Replies come
back as PostgreSQL messages and are read into a :class:`Reply`; admin/merge.py turns the
replies of all workers into one. The same sockets carry forwarded cancel requests, so a
console command that waits (PAUSE) can be cancelled on every worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from dataclasses import dataclass, field

from ..errors import ProtocolError
from ..protocol import messages as m

CONNECT_TIMEOUT = 5.0
_HEADER = struct.Struct("!ci")
_REPLY_LIMIT = 1 << 30  # a console reply of a worker (SHOW CLIENTS of many clients is large)


@dataclass
class Reply:
    """One worker's answer to one console command."""

    columns: list[tuple[str, int]] | None = None
    rows: list[list[str | None]] = field(default_factory=list)
    tag: str | None = None
    error: dict[str, str] | None = None
    notices: list[bytes] = field(default_factory=list)  # whole NoticeResponse messages

    def encode(self) -> bytes:
        """The reply as the console would send it, ReadyForQuery included."""
        out = list(self.notices)
        if self.error is not None:
            e = self.error
            out.append(m.error_response(e.get("S", "ERROR"), e.get("C", "XX000"),
                                        e.get("M", ""), e.get("D")))
        else:
            if self.columns is not None:
                out.append(m.row_description(self.columns))
                out.extend(m.data_row(row) for row in self.rows)
            if self.tag is not None:
                out.append(m.command_complete(self.tag))
        out.append(m.READY_IDLE)
        return b"".join(out)


def parse_reply(data: bytes) -> Reply:
    """Read the messages of one reply, up to and including its ReadyForQuery."""
    reply = Reply()
    pos = 0
    while pos + 5 <= len(data):
        kind, length = _HEADER.unpack_from(data, pos)
        body = data[pos + 5:pos + 1 + length]
        raw = data[pos:pos + 1 + length]
        pos += 1 + length
        if kind == b"T":
            reply.columns = _row_description(body)
        elif kind == b"D":
            reply.rows.append(_data_row(body))
        elif kind == b"C":
            reply.tag = body.rstrip(b"\0").decode()
        elif kind == b"E":
            reply.error = m.parse_error_fields(body)
        elif kind == b"N":
            reply.notices.append(raw)
        elif kind == b"Z":
            break
    return reply


def _row_description(body: bytes) -> list[tuple[str, int]]:
    count = struct.unpack_from("!h", body, 0)[0]
    pos = 2
    out = []
    for _ in range(count):
        end = body.index(b"\0", pos)
        name = body[pos:end].decode()
        pos = end + 1
        oid = struct.unpack_from("!i", body, pos + 6)[0]
        pos += 18
        out.append((name, oid))
    return out


def _data_row(body: bytes) -> list[str | None]:
    count = struct.unpack_from("!h", body, 0)[0]
    pos = 2
    out: list[str | None] = []
    for _ in range(count):
        size = struct.unpack_from("!i", body, pos)[0]
        pos += 4
        if size < 0:
            out.append(None)
        else:
            out.append(body[pos:pos + size].decode())
            pos += size
    return out


async def _read_message(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    header = await reader.readexactly(5)
    kind, length = _HEADER.unpack(header)
    if not 4 <= length <= _REPLY_LIMIT:
        raise ProtocolError(f"invalid message length {length} from a worker")
    return kind, header + await reader.readexactly(length - 4)


class SiblingCall:
    """One command sent to one sibling; ``key`` lets it be cancelled while it waits."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.text = text
        self.key: tuple[int, int] | None = None

    async def run(self, timeout: float | None) -> Reply:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(self.path), CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            return _failure(f"worker did not answer: {exc}")
        try:
            writer.write(m.startup_message({"user": "pgbouncer", "database": "pgbouncer"}))
            while True:
                kind, raw = await asyncio.wait_for(_read_message(reader), CONNECT_TIMEOUT)
                if kind == b"K":
                    self.key = struct.unpack_from("!ii", raw, 5)
                elif kind == b"E":
                    return parse_reply(raw)
                elif kind == b"Z":
                    break
            writer.write(m.query(self.text))
            parts = []
            while True:
                kind, raw = await asyncio.wait_for(_read_message(reader), timeout)
                parts.append(raw)
                if kind == b"Z":
                    break
            writer.write(m.message(b"X"))
            return parse_reply(b"".join(parts))
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            return _failure(f"worker did not answer: {exc or exc.__class__.__name__}")
        except ProtocolError as exc:
            return _failure(f"worker answered badly: {exc.message}")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def cancel(self) -> None:
        if self.key is None:
            return
        with contextlib.suppress(OSError):
            reader, writer = await asyncio.open_unix_connection(self.path)
            writer.write(m.cancel_request(*self.key))
            await writer.drain()
            await reader.read()
            writer.close()


def _failure(message: str) -> Reply:
    return Reply(error={"S": "ERROR", "C": "58000", "M": message})
