"""Command line, compatible with PgBouncer's: ``pgusher [-d] [-q] [-v] [-u USER] CONFIG.ini``.

Strategy: parse flags, load and validate the configuration before anything else (so a bad
file fails fast with file and line), then daemonize and drop privileges if asked, install
uvloop and run the Application until a signal ends it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import encodings.idna  # noqa: F401  (host name lookups; loaded here, before -u drops root)
import os
import platform
import pwd
import sys
from importlib.metadata import version

from . import VERSION_STRING
from .app import Application
from .config import Settings
from .errors import ConfigError
from .log import log
from .net.sockopts import unix_socket_in_use
from .workers import worker_count
from .workers.supervisor import supervise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pgusher", add_help=False,
        description="PostgreSQL connection pooler, compatible with PgBouncer's configuration.")
    parser.add_argument("config", nargs="?", help="path to pgbouncer.ini / pgusher.ini")
    parser.add_argument("-d", "--daemon", action="store_true",
                        help="run in the background (needs pidfile)")
    parser.add_argument("-q", "--quiet", action="store_true", help="do not log to stderr")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging; repeat for more")
    parser.add_argument("-u", "--user", help="switch to this user after start-up")
    parser.add_argument("-V", "--version", action="store_true", help="show version and exit")
    parser.add_argument("-h", "--help", action="store_true", help="show this help and exit")
    return parser


def version_text() -> str:
    try:
        import uvloop  # noqa: F401

        loop = f"uvloop {version('uvloop')}"
    except ImportError:
        loop = "asyncio"
    return f"{VERSION_STRING}\nPython {platform.python_version()}\nevent loop: {loop}"


def _daemonize() -> None:
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    if devnull > 2:
        os.close(devnull)


def _switch_user(name: str) -> None:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise ConfigError(f"could not find user '{name}' to switch to") from None
    os.setgid(entry.pw_gid)
    os.initgroups(name, entry.pw_gid)
    os.setuid(entry.pw_uid)


def _check_pidfile(path: str) -> None:
    """Refuse to start over a live instance's pidfile (a stale one is overwritten later)."""
    try:
        with open(path) as fh:
            old = int(fh.read().strip() or "0")
    except (OSError, ValueError):
        return
    if not old or old == os.getpid():
        return
    try:
        os.kill(old, 0)
    except ProcessLookupError:
        return
    except PermissionError:
        pass  # alive, owned by someone else
    raise ConfigError(f"pidfile {path} exists and process {old} is running")


def _check_unix_socket(settings: Settings) -> None:
    if not settings.unix_socket_dir:
        return
    path = os.path.join(settings.unix_socket_dir, f".s.PGSQL.{settings.listen_port}")
    if unix_socket_in_use(path):  # a stale file is removed by the listener
        raise ConfigError(f"unix socket {path} is in use, cannot continue")


def _write_pidfile(path: str) -> None:
    _check_pidfile(path)
    with open(path, "w") as fh:
        fh.write(f"{os.getpid()}\n")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.help:
        parser.print_help()
        return 0
    if args.version:
        print(version_text())
        return 0
    if not args.config:
        parser.print_usage(sys.stderr)
        print("pgusher: error: a configuration file is required", file=sys.stderr)
        return 1
    try:
        app = Application(args.config, verbose=args.verbose, quiet=args.quiet or args.daemon)
    except ConfigError as exc:
        print(f"pgusher: {exc.message}", file=sys.stderr)
        return 1
    app.setup_logging()
    for warning in app.config.warnings:
        log.warning("%s", warning)
    pidfile = app.config.settings.pidfile
    if args.daemon and not pidfile:
        print("pgusher: in daemon mode, pidfile must be set in the config", file=sys.stderr)
        return 1
    # Checks that must fail in the foreground, where an init script sees the exit code.
    try:
        if pidfile:
            _check_pidfile(pidfile)
        _check_unix_socket(app.config.settings)
    except ConfigError as exc:
        print(f"pgusher: {exc.message}", file=sys.stderr)
        return 1
    if args.daemon:
        _daemonize()
    try:
        if pidfile:
            _write_pidfile(pidfile)
        user = args.user or app.config.settings.user
        if user and os.geteuid() == 0:
            # Switched once the listeners are bound, as PgBouncer does (low ports need root).
            _preload_for_user_switch()
            app.after_listen = lambda: _switch_user(user)
        count = worker_count(app.config.pgusher.workers)
        if count > 1:
            return supervise(app, count, _run)
        return _run(app)
    except ConfigError as exc:
        log.critical("%s", exc.message)
        return 1
    except OSError as exc:
        log.critical("%s", exc)
        return 1
    finally:
        if pidfile and os.path.exists(pidfile):
            try:
                with open(pidfile) as fh:
                    if fh.read().strip() == str(os.getpid()):
                        os.unlink(pidfile)
            except OSError:
                pass


def _preload_for_user_switch() -> None:
    """Import what later code loads lazily: the interpreter's tree may be private to root."""
    with contextlib.suppress(ImportError):
        import uvloop  # noqa: F401


def _run(app: Application) -> int:
    try:
        import uvloop
    except ImportError:
        log.warning("uvloop is not installed; using the slower standard asyncio loop")
        return asyncio.run(app.run())
    return uvloop.run(app.run())
