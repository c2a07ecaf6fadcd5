"""Command line, compatible with PgBouncer's: ``pgusher [-d] [-q] [-v] [-u USER] CONFIG.ini``.

Strategy: parse flags, load and validate the configuration before anything else (so a bad
file fails fast with file and line), check what start-up needs (startup.py), then daemonize,
bind, drop privileges to ``-u USER`` and run the Application on uvloop until a signal ends it.
Every reason not to start becomes one FATAL line and exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import encodings.idna  # noqa: F401  (host name lookups; loaded here, before -u drops root)
import logging
import os
import platform
import sys
import time
from importlib.metadata import version

from . import VERSION_STRING
from .app import Application
from .errors import ConfigError, StartupError
from .log import PgusherLogger, line_of, log
from .startup import (
    check_logfile,
    check_pidfile,
    check_unix_socket,
    check_user,
    fd_limit_line,
    switch_user,
    write_pidfile,
)
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


def fatal(message: str) -> int:
    """One FATAL line on each output logging has, and on stderr, where whoever started the
    pooler looks first (even with -q or -d: it has not daemonized yet, or stderr is null)."""
    if PgusherLogger.streams:
        log.critical("%s", message)
    if sys.stderr not in PgusherLogger.streams:
        print(line_of(time.time(), logging.CRITICAL, os.getpid(), message), file=sys.stderr)
    return 1


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
    written: list[str] = []  # the pidfile, once this process wrote it
    try:
        return _start(args, written)
    except (ConfigError, StartupError) as exc:
        return fatal(exc.message)
    except OSError as exc:  # anything the checks did not foresee: still one line
        return fatal(str(exc))
    finally:
        for pidfile in written:
            try:
                with open(pidfile) as fh:
                    if fh.read().strip() == str(os.getpid()):
                        os.unlink(pidfile)
            except OSError:
                pass


def _start(args: argparse.Namespace, written: list[str]) -> int:
    """The start-up sequence, PgBouncer's order: configuration and TLS files, logfile, user,
    unix socket and pidfile, daemon, then the listeners. Failures raise (see startup.py)."""
    app = Application(args.config, verbose=args.verbose, quiet=args.quiet or args.daemon)
    settings = app.config.settings
    created_log = check_logfile(settings.logfile)
    app.setup_logging()
    for warning in app.config.warnings:
        log.warning("%s", warning)
    user = args.user or settings.user
    check_user(user)
    pidfile = settings.pidfile
    if args.daemon and not pidfile:
        raise StartupError("daemon needs pidfile configured")
    # Checks that must fail in the foreground, where an init script sees the exit code.
    if pidfile:
        check_pidfile(pidfile)
    check_unix_socket(settings.unix_socket_dir, settings.listen_port)
    if args.daemon:
        _daemonize()
    log.info("%s", fd_limit_line(app.config, len(set(app.userlist) | set(app.config.users))))
    if pidfile:
        write_pidfile(pidfile)
        written.append(pidfile)
    if user and os.geteuid() == 0:
        # Switched once the listeners are bound (ports below 1024 need root).
        _preload_for_user_switch()
        own = settings.logfile if created_log else ""
        app.after_listen = lambda: switch_user(user, own)
    count = worker_count(app.config.pgusher.workers)
    if count > 1:
        return supervise(app, count, _run)
    return _run(app)


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
