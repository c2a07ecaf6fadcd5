"""The supervisor: binds the sockets, forks the workers, restarts one that dies.

Strategy: plain blocking code with no event loop, so that forking is safe. Signals sent to
the supervisor (SIGHUP, SIGINT, SIGTERM, SIGQUIT, SIGUSR1, SIGUSR2) are passed on to every
worker, which handles them as a single-process pgusher would; INT, TERM and QUIT also stop
restarts, and the supervisor exits once every worker has. A worker that exits otherwise is
logged, its shared counts are wiped and it is started again (after a second's pause if it
died within a second of starting, so a crash loop does not spin).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import tempfile
import time
from types import FrameType
from typing import TYPE_CHECKING

from ..errors import ConfigError, PgusherError, StartupError, listen_error
from ..log import log
from . import WorkerInfo, internal_path, notify
from .shared import SharedCounts

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..app import Application

_FORWARDED = (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGUSR1,
              signal.SIGUSR2)
_STOPPING = (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT)
QUICK_DEATH = 1.0


def bind_tcp(host: str | None, port: int, backlog: int) -> list[socket.socket]:
    """Listening sockets for one address, SO_REUSEPORT set, as create_server would bind."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    seen = set()
    out: list[socket.socket] = []
    for family, kind, proto, _, addr in infos:
        if (family, addr) in seen:
            continue
        seen.add((family, addr))
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
            sock.listen(backlog)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            for other in out:
                other.close()
            raise listen_error(f"{host or '*'}:{port}", exc) from None
        out.append(sock)
    return out


def bind_unix(path: str, backlog: int, mode: int | None = None) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise listen_error(f"unix:{path}", exc) from None
    if mode is not None:
        os.chmod(path, mode)
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


class Supervisor:
    def __init__(self, app: Application, count: int, run: Callable[[Application], int]) -> None:
        self.app = app
        self.count = count
        self.run_app = run
        self.pids: dict[int, int] = {}  # pid -> worker index
        self.started: dict[int, float] = {}
        self.stopping = False
        self.listen: list[list[socket.socket]] = [[] for _ in range(count)]
        self.unix: socket.socket | None = None
        self.unix_path = ""
        self.internal: list[socket.socket] = []
        self.rundir = ""
        self.shared: SharedCounts | None = None

    # ------------------------------------------------------------------ set-up

    def bind(self) -> None:
        s = self.app.config.settings
        addrs = [a.strip() for a in s.listen_addr.split(",") if a.strip()]
        for addr in addrs:
            host = None if addr == "*" else addr
            for index in range(self.count):
                for sock in bind_tcp(host, s.listen_port, s.listen_backlog):
                    self.listen[index].append(sock)
                    if index == 0:
                        name = sock.getsockname()
                        log.info("listening on %s:%s", name[0], name[1])
        if s.unix_socket_dir:
            path = os.path.join(s.unix_socket_dir, f".s.PGSQL.{s.listen_port}")
            self.app.check_unix_path(path)
            self.unix = bind_unix(path, s.listen_backlog, s.unix_socket_mode)
            self.unix_path = path
            log.info("listening on unix:%s", path)
        if not addrs and self.unix is None:
            raise ConfigError("nothing to listen on: set listen_addr or unix_socket_dir")

    def prepare(self) -> None:
        """After the user switch: the private directory, sockets and shared table."""
        self.rundir = tempfile.mkdtemp(prefix="pgusher-")
        backlog = self.app.config.settings.listen_backlog
        self.internal = [bind_unix(internal_path(self.rundir, i), backlog)
                         for i in range(self.count)]
        self.shared = SharedCounts(self.count, os.path.join(self.rundir, "limits.lock"))

    # ------------------------------------------------------------------ workers

    def spawn(self, index: int) -> None:
        pid = os.fork()
        if pid:
            self.pids[pid] = index
            self.started[index] = time.monotonic()
            return
        code = 70
        try:
            notify.forget()  # only the supervisor speaks to the service manager
            signal.setitimer(signal.ITIMER_REAL, 0)
            for sig in (*_FORWARDED, signal.SIGALRM):
                signal.signal(sig, signal.SIG_DFL)
            assert self.shared is not None
            self.shared.attach(index)
            for other, socks in enumerate(self.listen):
                if other != index:
                    for sock in socks:
                        sock.close()
            self.app.worker = WorkerInfo(
                index=index, count=self.count, rundir=self.rundir, shared=self.shared,
                supervisor_pid=os.getppid(), listen=self.listen[index], unix=self.unix,
                unix_path=self.unix_path, internal=self.internal[index])
            code = self.run_app(self.app)
        except BaseException as exc:  # a worker must never return into the supervisor
            with contextlib.suppress(Exception):
                log.critical("worker %d failed: %s", index + 1, exc)
        finally:
            os._exit(code)

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        if sig in _STOPPING and not self.stopping:
            self.stopping = True
            notify.notify("STOPPING=1")
            self._close_listeners()
        elif sig == signal.SIGHUP:
            notify.reloading()
        for pid in list(self.pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        if sig == signal.SIGHUP:
            notify.notify("READY=1")  # each worker reloads on its own; the signal is theirs

    def _on_alarm(self, sig: int, frame: FrameType | None) -> None:
        notify.notify("WATCHDOG=1")

    def _close_listeners(self) -> None:
        # New connections are refused once the workers close theirs too.
        for socks in self.listen:
            for sock in socks:
                sock.close()
        if self.unix is not None:
            self.unix.close()

    def run(self) -> int:
        for sig in _FORWARDED:
            signal.signal(sig, self._on_signal)
        log.info("starting %d worker processes", self.count)
        for index in range(self.count):
            self.spawn(index)
        # The listening sockets are open: connections queue until a worker accepts them.
        notify.notify("READY=1", f"STATUS=accepting connections, {self.count} workers")
        interval = notify.watchdog_interval()
        if interval is not None:
            signal.signal(signal.SIGALRM, self._on_alarm)
            signal.setitimer(signal.ITIMER_REAL, interval, interval)
        try:
            self._watch()
        finally:
            self._cleanup()
        log.info("shutdown complete")
        return 0

    def _watch(self) -> None:
        while self.pids:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                return
            index = self.pids.pop(pid, None)
            if index is None:
                continue
            if self.stopping:
                continue
            how = (f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
                   else f"status {os.waitstatus_to_exitcode(status)}")
            log.warning("worker %d (pid %d) exited with %s, restarting it", index + 1, pid, how)
            assert self.shared is not None
            self.shared.clear_worker(index)
            if time.monotonic() - self.started.get(index, 0.0) < QUICK_DEATH:
                time.sleep(QUICK_DEATH)
                if self.stopping:
                    continue
            self.spawn(index)

    def _cleanup(self) -> None:
        self._close_listeners()
        for sock in self.internal:
            sock.close()
        if self.unix_path:
            with contextlib.suppress(OSError):
                os.unlink(self.unix_path)
        if self.rundir:
            shutil.rmtree(self.rundir, ignore_errors=True)


def supervise(app: Application, count: int, run: Callable[[Application], int]) -> int:
    sup = Supervisor(app, count, run)
    try:
        sup.bind()
        if app.after_listen is not None:
            app.after_listen()
            app.after_listen = None
        sup.prepare()
    except PgusherError:
        sup._cleanup()
        raise
    except OSError as exc:
        sup._cleanup()
        raise StartupError(str(exc)) from None
    return sup.run()
