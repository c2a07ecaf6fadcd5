"""What start-up checks before the pooler serves anyone, and how it says that it cannot.

Strategy: every reason the process cannot start (a bad configuration, a logfile or pidfile it
cannot write, a port another process holds, TLS files it cannot read, root without ``-u``) is
a :class:`StartupError` or ConfigError raised where it is found; the command line catches them
at one place and writes one FATAL line in PgBouncer's format, then exits with status 1. The
wording follows PgBouncer's where it has a message of its own, so scripts that grep for it
keep working.
"""

from __future__ import annotations

import os
import pwd
import resource

from .config import Config
from .errors import StartupError
from .net.sockopts import unix_socket_in_use


def check_user(user: str | None) -> None:
    """Refuse root unless there is a user to switch to, and make sure that user exists.

    PgBouncer refuses to run as root; ``-u`` (or the ``user`` setting) names who it becomes.
    pgusher binds its listeners first and switches afterwards, so a port below 1024 works.
    """
    if user:
        try:
            pwd.getpwnam(user)
        except KeyError:
            raise StartupError(f"could not find user '{user}' to switch to") from None
        return
    if os.geteuid() == 0:
        raise StartupError("pgusher should not run as root (give -u USER to switch to)")


def switch_user(name: str, own: str = "") -> None:
    """Become ``name``; ``own`` is a file start-up created as root that the user will
    reopen (the logfile, on every reload), so it changes hands first."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise StartupError(f"could not find user '{name}' to switch to") from None
    try:
        if own:
            os.chown(own, entry.pw_uid, entry.pw_gid)
        os.setgid(entry.pw_gid)
        os.initgroups(name, entry.pw_gid)
        os.setuid(entry.pw_uid)
    except OSError as exc:
        raise StartupError(f"failed to assume identity of user '{name}': "
                           f"{os.strerror(exc.errno or 0)}") from None


def check_pidfile(path: str) -> None:
    """Refuse to start over a live instance's pidfile (a stale one is overwritten later)."""
    try:
        with open(path) as fh:
            old = int(fh.read().strip() or "0")
    except FileNotFoundError:
        return
    except ValueError:
        return  # garbage: not a live instance's file, replaced when written
    except OSError as exc:
        raise StartupError(f"could not read pidfile '{path}': {_reason(exc)}") from None
    if not old or old == os.getpid():
        return
    try:
        os.kill(old, 0)
    except ProcessLookupError:
        return
    except PermissionError:
        pass  # alive, owned by someone else
    raise StartupError(f"pidfile '{path}' exists, another instance running? (pid {old})")


def write_pidfile(path: str) -> None:
    check_pidfile(path)
    try:
        with open(path, "w") as fh:
            fh.write(f"{os.getpid()}\n")
    except OSError as exc:
        raise StartupError(f"could not open pidfile '{path}': {_reason(exc)}") from None


def check_logfile(path: str) -> bool:
    """Open the logfile once for appending, as logging will, to fail before anything else.
    True when this created it."""
    if not path:
        return False
    existed = os.path.exists(path)
    try:
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise StartupError(f"Cannot open logfile: '{path}': {_reason(exc)}") from None
    return not existed


def check_unix_socket(directory: str, port: int) -> None:
    if not directory:
        return
    path = os.path.join(directory, f".s.PGSQL.{port}")
    if unix_socket_in_use(path):  # a stale file is removed by the listener
        raise StartupError(f"unix socket {path} is in use, cannot continue")


def fd_limit_line(config: Config, users: int) -> str:
    """The ``kernel file descriptor limit`` line PgBouncer logs at start-up.

    The expected use is PgBouncer's estimate: every client, ten spare, and each database's
    pool size once per user (once in all when the entry names its own user).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    s = config.settings
    expected = s.max_client_conn + 10
    for name, entry in config.databases.items():
        if name == "*":
            continue
        size = entry.pool_size if entry.pool_size is not None and entry.pool_size >= 0 else (
            s.default_pool_size)
        expected += size if entry.user else size * users
    return (f"kernel file descriptor limit: {_limit(soft)} (hard: {_limit(hard)}); "
            f"max_client_conn: {s.max_client_conn}, max expected fd use: {expected}")


def _limit(value: int) -> int:
    return -1 if value == resource.RLIM_INFINITY else value


def _reason(exc: OSError) -> str:
    return os.strerror(exc.errno) if exc.errno else str(exc)

