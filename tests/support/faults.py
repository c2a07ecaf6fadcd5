"""A fault-injecting TCP proxy on the loopback interface.

Put it between a client and the pooler, or between the pooler and PostgreSQL::

    with FaultProxy(pooler.port) as proxy:
        proxy.upstream.split = 1            # client -> target: every write in 1-byte pieces
        proxy.downstream.delay = 0.05       # target -> client: 50 ms before each chunk
        proxy.stall()                       # hold all traffic ...
        proxy.resume()                      # ... and let it go
        proxy.downstream.reset_after(100_000)   # cut a connection inside a message
        proxy.reset_all()                   # reset every connection now

Each direction has its own :class:`Faults`, read as every chunk passes, so a test may change
them while traffic flows. A reset sends TCP RST both ways (SO_LINGER 0), as a crashed host
or a middlebox would. The proxy runs its own asyncio loop in a daemon thread; it listens on
127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from typing import Any

__all__ = ["FaultProxy", "Faults"]

_CHUNK = 65536
_LINGER_RESET = struct.pack("ii", 1, 0)


class Faults:
    """What happens to the bytes of one direction.

    ``delay``: seconds to wait before forwarding each chunk read. ``split``: forward in pieces
    of this many bytes, each its own write (0: whole chunks); ``pause``: seconds between
    pieces. ``stalled``: while true, nothing is forwarded (it waits in the socket buffers).
    """

    def __init__(self) -> None:
        self.delay = 0.0
        self.split = 0
        self.pause = 0.0
        self.stalled = False
        self.forwarded = 0  # bytes forwarded in this direction, all connections
        self._reset_limit: int | None = None
        self._reset_mid_message = True
        self._epoch = 0
        self._owner: _Link | None = None
        self.reset_done = threading.Event()

    def reset_after(self, nbytes: int, *, mid_message: bool = True) -> None:
        """Reset the first connection that forwards ``nbytes`` more bytes this way (once).

        With ``mid_message`` the cut is moved on, if needed, to fall inside a protocol-3
        message (the direction's framing is followed from its first byte, so this fits the
        server-to-client direction of a plain connection).
        """
        self._epoch += 1
        self._reset_mid_message = mid_message
        self._owner = None
        self.reset_done.clear()
        self._reset_limit = nbytes


class _Frames:
    """Follows protocol-3 message boundaries (type byte, int32 length, body)."""

    def __init__(self) -> None:
        self.header = b""
        self.left = 0  # body bytes still to come in the current message

    @property
    def at_boundary(self) -> bool:
        return not self.header and not self.left

    def feed(self, data: bytes) -> None:
        pos = 0
        n = len(data)
        while pos < n:
            if self.left:
                step = min(self.left, n - pos)
                self.left -= step
                pos += step
                continue
            part = data[pos:pos + 5 - len(self.header)]
            self.header += part
            pos += len(part)
            if len(self.header) == 5:
                self.left = max(int.from_bytes(self.header[1:5], "big") - 4, 0)
                self.header = b""


class _Link:
    """One proxied connection: the client's side and the target's side."""

    def __init__(self, proxy: FaultProxy, client: tuple[asyncio.StreamReader,
                                                         asyncio.StreamWriter],
                 target: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        self.proxy = proxy
        self.client = client
        self.target = target
        self.closed = False
        # Per direction: [epoch of the reset rule seen, bytes since it was set], framing.
        self.counts = {"up": [0, 0], "down": [0, 0]}
        self.frames = {"up": _Frames(), "down": _Frames()}
        self.cut_next = {"up": False, "down": False}

    def reset(self) -> None:
        """RST both sockets at once."""
        if self.closed:
            return
        self.closed = True
        for _, writer in (self.client, self.target):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            writer.transport.abort()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for _, writer in (self.client, self.target):
            writer.close()

    async def pump(self, way: str, faults: Faults, reader: asyncio.StreamReader,
                   writer: asyncio.StreamWriter) -> None:
        counts = self.counts[way]
        frames = self.frames[way]
        try:
            while not self.closed:
                data = await reader.read(_CHUNK)
                if not data:
                    if writer.can_write_eof():
                        with contextlib.suppress(OSError):
                            writer.write_eof()
                    return
                while faults.stalled and not self.closed:
                    await asyncio.sleep(0.005)
                if faults.delay:
                    await asyncio.sleep(faults.delay)
                cut = self._cut(way, faults, counts, frames, data)
                piece = data if cut is None else data[:cut]
                frames.feed(piece)
                await self._write(faults, writer, piece)
                if cut is not None:
                    self.reset()
                    faults._reset_limit = None
                    faults._owner = None
                    faults.reset_done.set()
                    return
        except (ConnectionError, OSError):
            self.reset()

    def _cut(self, way: str, faults: Faults, counts: list[int], frames: _Frames,
             data: bytes) -> int | None:
        """Where in ``data`` to reset the connection (after that many bytes), or None."""
        if faults._owner is self and self.cut_next[way]:
            return 1  # the last chunk ended between messages: one byte into this one
        limit = faults._reset_limit
        if limit is None or faults._owner not in (None, self):
            return None
        if counts[0] != faults._epoch:
            counts[0], counts[1] = faults._epoch, 0
        before = counts[1]
        counts[1] += len(data)
        if counts[1] < limit:
            return None
        faults._owner = self  # this connection takes the reset; no other will
        cut = limit - before
        if faults._reset_mid_message:
            probe = _Frames()
            probe.header, probe.left = frames.header, frames.left
            probe.feed(data[:cut])
            if probe.at_boundary:
                if cut == len(data):
                    self.cut_next[way] = True
                    return None
                cut += 1
        return cut

    async def _write(self, faults: Faults, writer: asyncio.StreamWriter, data: bytes) -> None:
        size = faults.split
        if size <= 0:
            writer.write(data)
        else:
            for pos in range(0, len(data), size):
                writer.write(data[pos:pos + size])
                if faults.pause:
                    await asyncio.sleep(faults.pause)
        faults.forwarded += len(data)
        await writer.drain()


class FaultProxy:
    """Listens on 127.0.0.1:``port`` (free by default) and forwards to target_host:target_port.

    ``upstream`` holds the faults of what the client sends, ``downstream`` of what the target
    sends back.
    """

    host = "127.0.0.1"

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.upstream = Faults()
        self.downstream = Faults()
        self.port = 0
        self.links: list[_Link] = []
        self.accepted = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name=f"fault-proxy->{target_port}")

    # ---- lifecycle

    def start(self) -> FaultProxy:
        self._thread.start()
        self._server = self._run(asyncio.start_server(self._accept, self.host, 0))
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def close(self) -> None:
        """Stop listening and reset every connection still open."""
        if not self._thread.is_alive():
            return

        async def shut() -> None:
            if self._server is not None:
                self._server.close()
            for link in list(self.links):
                link.reset()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self._run(shut())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- controls (from any thread)

    def stall(self) -> None:
        self.upstream.stalled = self.downstream.stalled = True

    def resume(self) -> None:
        self.upstream.stalled = self.downstream.stalled = False

    def reset_all(self) -> None:
        """Reset every connection open now (new ones are still accepted)."""

        async def reset() -> None:
            for link in list(self.links):
                link.reset()

        self._run(reset())

    def open_links(self) -> int:
        return sum(1 for link in self.links if not link.closed)

    # ---- inside the loop

    def _run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            target = await asyncio.open_connection(*self.target)
        except OSError:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            writer.transport.abort()
            return
        for _, w in ((reader, writer), target):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link = _Link(self, (reader, writer), target)
        self.links.append(link)
        try:
            await asyncio.gather(
                link.pump("up", self.upstream, reader, target[1]),
                link.pump("down", self.downstream, target[0], writer))
        finally:
            link.close()
            self.links.remove(link)
