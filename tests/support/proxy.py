"""A TCP proxy in front of PostgreSQL that can misbehave on request.

Ordinary connections are piped both ways. A CancelRequest can be held back (a slow postmaster),
new connections can be kept from completing (their SYN is dropped while the accept queue is
full), the end of a server's stream can be held back after its last bytes (a backend slow to
exit), and every piped connection can be cut at once (a network failure).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time

from .wire import CANCEL_CODE, exactly, wait_closed

__all__ = ["PgProxy"]


class PgProxy:
    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.cancel_delay = 0.0  # seconds a CancelRequest is held before it goes on
        self.eof_delay = 0.0  # seconds the server's end of stream is held after its data
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        # A backlog of 0: one connection left unaccepted fills the queue (block_accepts).
        self.listener.listen(0)
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.received: list[float] = []  # time.time() a cancel request arrived
        self.delivered: list[float] = []  # ... and PostgreSQL closed its cancel connection
        self.silent = 0  # connections that closed without sending anything
        self.server_eof: list[float] = []  # time.time() PostgreSQL closed a piped connection
        self._accepting = threading.Event()
        self._accepting.set()
        self._stop = False
        self._blocker: socket.socket | None = None
        self._blocker_addr: object = None
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def close(self) -> None:
        self._stop = True
        self._accepting.set()
        self.cut()
        with contextlib.suppress(OSError):
            self.listener.close()
        if self._blocker is not None:
            self._blocker.close()

    def block_accepts(self) -> None:
        """New connections do not complete: their SYN is dropped until unblock_accepts."""
        self._accepting.clear()
        time.sleep(0.2)  # let an accept() in progress time out
        self._blocker = socket.create_connection(("127.0.0.1", self.port))
        self._blocker_addr = self._blocker.getsockname()

    def unblock_accepts(self) -> None:
        self._accepting.set()
        if self._blocker is not None:
            self._blocker.close()
            self._blocker = None

    def cut(self) -> None:
        """Close every piped connection at once, on both sides, with nothing more sent."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()

    def _accept_loop(self) -> None:
        while not self._stop:
            self._accepting.wait()
            if not self._accepting.is_set() or self._stop:
                continue
            try:
                conn, addr = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            if addr == self._blocker_addr:
                conn.close()
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        upstream = None
        try:
            head = conn.recv(8)
            if not head:
                self.silent += 1
                return
            while len(head) < 8:
                more = conn.recv(8 - len(head))
                if not more:
                    return
                head += more
            length, code = struct.unpack("!ii", head)
            upstream = socket.create_connection(self.target)
            if length == 16 and code == CANCEL_CODE:
                rest = exactly(conn, 8)
                self.received.append(time.time())
                time.sleep(self.cancel_delay)
                upstream.sendall(head + rest)
                self.delivered.append(wait_closed(upstream))
                return
            upstream.sendall(head)
            with self._lock:
                self._pairs.append((conn, upstream))
            back = threading.Thread(target=self._pipe, args=(upstream, conn, True), daemon=True)
            back.start()
            self._pipe(conn, upstream, False)
            back.join()
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                conn.close()
            if upstream is not None:
                with contextlib.suppress(OSError):
                    upstream.close()

    def _pipe(self, src: socket.socket, dst: socket.socket, from_server: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            return
        if from_server:
            self.server_eof.append(time.time())
            time.sleep(self.eof_delay)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
