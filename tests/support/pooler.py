"""Start the pooler under test (pgusher, or any PgBouncer-compatible binary).

The command comes from $PGUSHER_CMD (split shell-style), default
``[sys.executable, "-m", "pgusher"]``.  Neither PgBouncer nor pgusher runs as
root without being told whom to become: when we are root, a command that looks
like pgbouncer runs as the ``postgres`` user (override with $PGUSHER_RUN_AS,
empty for "as is"), and pgusher is started as root with ``-u postgres`` (see
:func:`user_args`), so it binds first and switches after, as in production.
The work directory belongs to that user either way.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal as _signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Literal

from .pg import (
    PgCluster,
    as_user_kwargs,
    chown_tree,
    free_port,
    libpq_dsn,
    raise_nofile_limit,
    service_user,
    user_env,
)

__all__ = [
    "IniSections",
    "PoolerError",
    "PoolerFactory",
    "PoolerProc",
    "default_databases",
    "pooler_command",
    "render_ini",
    "start_pooler",
    "user_args",
    "write_userlist",
]

REPO_ROOT = Path(__file__).resolve().parents[2]

IniSections = Mapping[str, Mapping[str, str]]
RunAs = str | None | Literal["auto"]

_PLACEHOLDER = re.compile(
    r"\{(listen_port|listen_addr|workdir|socket_dir|logfile|auth_file|pidfile)\}"
)


class PoolerError(RuntimeError):
    pass


def pooler_command() -> list[str]:
    cmd = os.environ.get("PGUSHER_CMD")
    if cmd:
        return shlex.split(cmd)
    return [sys.executable, "-m", "pgusher"]


def _resolve_run_as(cmd: Sequence[str], run_as: RunAs) -> str | None:
    if run_as != "auto":
        return run_as
    env = os.environ.get("PGUSHER_RUN_AS")
    if env is not None:
        return env or None
    if os.path.basename(cmd[0]).startswith("pgbouncer"):
        return service_user()
    return None


def user_args(args: Sequence[str] = ()) -> list[str]:
    """``["-u", "postgres"]`` when we are root and ``args`` name no user, else nothing."""
    user = service_user()
    if user is None or any(a in ("-u", "--user") or a.startswith("--user=") for a in args):
        return []
    return ["-u", user]


def default_databases(pg: PgCluster, dbname: str = "app") -> dict[str, str]:
    """[databases] section pointing ``dbname`` at the test cluster over TCP."""
    return {dbname: f"host={pg.host} port={pg.port} dbname={dbname}"}


def _quote_userlist(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def write_userlist(path: str | os.PathLike[str], users: Mapping[str, str] | None) -> None:
    """Write an auth_file in PgBouncer's format: ``"user" "password"`` per line."""
    lines = [f"{_quote_userlist(u)} {_quote_userlist(p)}" for u, p in (users or {}).items()]
    Path(path).write_text("".join(line + "\n" for line in lines))


def render_ini(sections: IniSections) -> str:
    out: list[str] = []
    for name, items in sections.items():
        out.append(f"[{name}]")
        out.extend(f"{key} = {val}" for key, val in items.items())
        out.append("")
    return "\n".join(out)


def _ini_value(text: str, section: str, key: str) -> str | None:
    """Value of ``key`` in ``section`` of an ini text (last occurrence wins)."""
    current = None
    value = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in ";#":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1].strip().lower()
            continue
        if current == section and "=" in line:
            k, v = line.split("=", 1)
            if k.strip().lower() == key:
                value = v.strip()
    return value


class PoolerProc:
    """A running pooler process and the files it was started with.

    Attributes: host, port, socket_dir, workdir, ini_path, log_path (the
    ``logfile``), out_path (captured stdout+stderr), auth_file, pidfile, proc,
    cmd, run_as.
    """

    def __init__(
        self,
        *,
        cmd: Sequence[str],
        workdir: str,
        host: str,
        port: int,
        run_as: str | None,
        pidfile: str | None,
        pg: PgCluster | None,
        switch_to: str | None = None,
    ) -> None:
        self.cmd = list(cmd)
        # Given as -u: the process starts as root and becomes this user once it listens.
        self.switch_to = switch_to
        self.owner = run_as or switch_to
        self.workdir = workdir
        self.host = host
        self.port = port
        self.run_as = run_as
        self.pg = pg
        self.socket_dir = workdir
        self.ini_path = os.path.join(workdir, "pgusher.ini")
        self.log_path = os.path.join(workdir, "pgusher.log")
        self.out_path = os.path.join(workdir, "stdout.log")
        self.auth_file = os.path.join(workdir, "userlist.txt")
        self.pidfile = pidfile
        self.proc: subprocess.Popen[bytes] | None = None
        self.daemon = False
        self.owns_workdir = False
        self._out: IO[bytes] | None = None

    # ---- config files

    def write_ini(self, ini_sections: IniSections | str, *, pidfile: bool = False) -> None:
        """(Re)write pgusher.ini, filling in defaults; keeps this pooler's port.

        A dict gets defaults for listen_addr, listen_port, unix_socket_dir,
        logfile, auth_file (and pidfile when asked) in [pgbouncer], and a
        default [databases] section when it has none.  A string is written
        verbatim after substituting {listen_port}, {listen_addr}, {workdir},
        {socket_dir}, {logfile}, {auth_file}, {pidfile}.
        """
        if pidfile and self.pidfile is None:
            self.pidfile = os.path.join(self.workdir, "pgusher.pid")
        values = {
            "listen_port": str(self.port),
            "listen_addr": self.host,
            "workdir": self.workdir,
            "socket_dir": self.socket_dir,
            "logfile": self.log_path,
            "auth_file": self.auth_file,
            "pidfile": self.pidfile or os.path.join(self.workdir, "pgusher.pid"),
        }
        if isinstance(ini_sections, str):
            text = _PLACEHOLDER.sub(lambda m: values[m.group(1)], ini_sections)
        else:
            sections = {name: dict(items) for name, items in ini_sections.items()}
            if "databases" not in sections:
                if self.pg is None:
                    raise PoolerError("no [databases] section and no cluster for a default")
                sections = {"databases": default_databases(self.pg), **sections}
            main = sections.setdefault("pgbouncer", {})
            main.setdefault("listen_addr", self.host)
            main.setdefault("listen_port", str(self.port))
            main.setdefault("unix_socket_dir", self.socket_dir)
            main.setdefault("logfile", self.log_path)
            main.setdefault("auth_file", self.auth_file)
            if self.pidfile:
                main.setdefault("pidfile", self.pidfile)
            text = render_ini(sections)
        Path(self.ini_path).write_text(text)
        chown_tree(self.ini_path, self.owner)

    def write_userlist(self, userlist: Mapping[str, str] | None) -> None:
        write_userlist(self.auth_file, userlist)
        chown_tree(self.auth_file, self.owner)

    # ---- process

    def spawn(self, args: Sequence[str] = ()) -> None:
        raise_nofile_limit()
        self.daemon = "-d" in args or "--daemon" in args
        env = user_env(self.run_as)
        src = str(REPO_ROOT / "src")
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        if self._out is not None:
            self._out.close()
        self._out = open(self.out_path, "ab")  # noqa: SIM115 - closed in _reap()
        chown_tree(self.out_path, self.owner)
        switch = user_args(args) if self.switch_to else []
        self.proc = subprocess.Popen(
            [*self.cmd, *switch, *args, self.ini_path],
            cwd=self.workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **as_user_kwargs(self.run_as),
        )

    @property
    def pid(self) -> int | None:
        """PID of the pooler (read from the pidfile when it daemonized), None if gone."""
        if self.daemon:
            try:
                return int(Path(self.pidfile or "").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                return None
        if self.proc is not None and self.proc.poll() is None:
            return self.proc.pid
        return None

    def is_running(self) -> bool:
        pid = self.pid
        if pid is None:
            return False
        if not self.daemon:
            return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def log_text(self) -> str:
        """The pooler's logfile followed by its captured stdout/stderr."""
        parts = []
        for label, path in (("logfile", self.log_path), ("stdout/stderr", self.out_path)):
            try:
                text = Path(path).read_text(errors="replace")
            except OSError:
                continue
            if text:
                parts.append(f"--- {label} ({path})\n{text}")
        return "\n".join(parts)

    def dsn(
        self,
        user: str = "postgres",
        password: str | None = None,
        dbname: str = "app",
        **kw: object,
    ) -> str:
        """libpq key=value string for a TCP connection to the pooler."""
        return libpq_dsn(
            host=self.host, port=self.port, user=user, password=password, dbname=dbname, **kw
        )

    def unix_dsn(
        self, user: str = "postgres", password: str | None = None, dbname: str = "app", **kw: object
    ) -> str:
        return libpq_dsn(
            host=self.socket_dir, port=self.port, user=user, password=password, dbname=dbname, **kw
        )

    def wait_port(self, timeout: float = 10) -> None:
        """Wait until the TCP port accepts connections; raise PoolerError with the log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None and not self.daemon:
                raise PoolerError(
                    f"pooler exited with code {self.proc.returncode} before listening\n"
                    f"command: {self._cmdline()}\n{self.log_text()}"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise PoolerError(
            f"pooler not accepting connections on {self.host}:{self.port} after {timeout}s\n"
            f"command: {self._cmdline()}\n{self.log_text()}"
        )

    def _cmdline(self) -> str:
        args = self.proc.args if self.proc is not None else self.cmd
        assert not isinstance(args, (bytes, os.PathLike))
        return shlex.join(str(a) for a in args) if not isinstance(args, str) else args

    def signal(self, sig: int) -> None:
        pid = self.pid
        if pid is None:
            raise PoolerError("pooler is not running")
        os.kill(pid, sig)

    def reload(self) -> None:
        self.signal(_signal.SIGHUP)

    def wait_exit(self, timeout: float = 10) -> int | None:
        """Wait for the pooler to exit and return its exit code (None when it had
        daemonized).  Raises TimeoutError when it is still running."""
        deadline = time.monotonic() + timeout
        while True:
            child_done = self.proc is None or self.proc.poll() is not None
            if child_done and not self.is_running():
                self._reap()
                if self.proc is None or self.daemon:
                    return None
                return self.proc.returncode
            if time.monotonic() >= deadline:
                raise TimeoutError(f"pooler still running after {timeout}s")
            time.sleep(0.05)

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; return the exit code."""
        if not self.is_running():
            return self.wait_exit(0)
        with contextlib.suppress(ProcessLookupError, PoolerError):
            self.signal(_signal.SIGTERM)
        try:
            return self.wait_exit(timeout)
        except TimeoutError:
            self.kill()
            return self.wait_exit(5)

    def kill(self) -> None:
        pid = self.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, _signal.SIGKILL)

    def _reap(self) -> None:
        if self.proc is not None:
            self.proc.wait()
        if self._out is not None:
            self._out.close()
            self._out = None

    def cleanup(self, remove: bool | None = None) -> None:
        """Kill the pooler if still running, release resources and remove the work
        directory (kept with ``remove=False`` or $PGUSHER_KEEP_TMP)."""
        try:
            if self.is_running():
                self.kill()
            if self.proc is not None:
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
        finally:
            self._reap()
            if remove is None:
                remove = self.owns_workdir and not os.environ.get("PGUSHER_KEEP_TMP")
            if remove:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def __repr__(self) -> str:
        return f"<PoolerProc {self.host}:{self.port} pid={self.pid}>"


def start_pooler(
    ini_sections: IniSections | str,
    userlist: Mapping[str, str] | None = None,
    args: Sequence[str] = (),
    wait: bool = True,
    *,
    pg: PgCluster | None = None,
    cmd: Sequence[str] | None = None,
    run_as: RunAs = "auto",
    pidfile: bool = False,
    port: int | None = None,
    workdir: str | None = None,
    timeout: float = 10,
) -> PoolerProc:
    """Write the config files into a fresh directory and start the pooler.

    ``args`` go before the ini path (e.g. ``["-v"]``).  With ``-d`` in args a
    pidfile is configured automatically.  With ``wait`` the call returns once
    the TCP port accepts connections (``timeout`` seconds).
    """
    command = list(cmd) if cmd is not None else pooler_command()
    user = _resolve_run_as(command, run_as)
    switch_to = service_user() if user is None else None
    wd = workdir or tempfile.mkdtemp(prefix="pgusher-pooler-")
    os.chmod(wd, 0o755)
    chown_tree(wd, user or switch_to)
    given_port: str | None
    given_addr: str | None
    if isinstance(ini_sections, str):
        given_port = _ini_value(ini_sections, "pgbouncer", "listen_port") or "6432"
        given_addr = _ini_value(ini_sections, "pgbouncer", "listen_addr")
    else:
        main = dict(ini_sections.get("pgbouncer", {}))
        given_port = main.get("listen_port")
        given_addr = main.get("listen_addr")
    if port is None and given_port and given_port.isdigit():
        port = int(given_port)
    host = "127.0.0.1"
    if given_addr and not given_addr.startswith("{"):
        first = given_addr.split(",")[0].strip()
        if first not in ("*", "0.0.0.0", ""):
            host = first
    proc = PoolerProc(
        cmd=command,
        workdir=wd,
        host=host,
        port=port or free_port(),
        run_as=user,
        pidfile=None,
        pg=pg,
        switch_to=switch_to,
    )
    proc.owns_workdir = workdir is None
    proc.write_ini(ini_sections, pidfile=pidfile or "-d" in args)
    proc.write_userlist(userlist)
    proc.spawn(args)
    if wait:
        try:
            proc.wait_port(timeout)
        except BaseException:
            proc.cleanup()
            raise
    return proc


class PoolerFactory:
    """``pooler(ini_sections, userlist=None, args=(), wait=True, **kw) -> PoolerProc``.

    Extra keyword arguments go to support.start_pooler (cmd, run_as, pidfile,
    port, timeout).  Every pooler started is killed at teardown.
    """

    def __init__(self, pg: PgCluster) -> None:
        self.pg = pg
        self.started: list[PoolerProc] = []

    def __call__(
        self,
        ini_sections: IniSections | str,
        userlist: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        wait: bool = True,
        **kw: object,
    ) -> PoolerProc:
        proc = start_pooler(ini_sections, userlist, args, wait, pg=self.pg, **kw)  # type: ignore[arg-type]
        self.started.append(proc)
        return proc

    def databases(self, dbname: str = "app") -> dict[str, str]:
        """Default [databases] section: ``app = host=127.0.0.1 port=<pg.port> dbname=app``."""
        return default_databases(self.pg, dbname)

    def cleanup(self) -> None:
        for proc in self.started:
            proc.cleanup()
