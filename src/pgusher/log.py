"""Logging in PgBouncer's line format.

Operators' alerts and scripts match on PgBouncer's log lines, so the layout is kept:
``2025-01-01 12:00:00.123 UTC [pid] LOG C-0x1a2b: db/user@addr:port message``. Python's
logging levels map onto PgBouncer's words (INFO is ``LOG``). Output goes to stderr unless
quiet, to ``logfile`` when set, and to syslog when enabled.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

LOGGER_NAME = "pgusher"

_LEVEL_WORDS = {
    logging.DEBUG: "DEBUG",
    logging.INFO: "LOG",
    logging.WARNING: "WARNING",
    logging.ERROR: "ERROR",
    logging.CRITICAL: "FATAL",
}
NOISE = 5  # verbose level 2 ("noise" in PgBouncer's terms)
logging.addLevelName(NOISE, "NOISE")
_LEVEL_WORDS[NOISE] = "NOISE"


class PgbouncerFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return line_of(record.created, record.levelno, record.process, record.getMessage())


_clock = [-1, ""]  # the second last formatted, and its text: strftime once a second


def line_of(created: float, level: int, pid: int | None, text: str) -> str:
    second = int(created)
    if second != _clock[0]:
        _clock[0] = second
        _clock[1] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(second))
    millis = int((created - second) * 1000)
    word = _LEVEL_WORDS.get(level) or logging.getLevelName(level)
    return f"{_clock[1]}.{millis:03d} UTC [{pid}] {word} {text}"


class PgusherLogger(logging.Logger):
    """A logger whose lines go straight to their streams.

    Every connection logs at least two lines (login attempt, closing), so the generic path
    of the logging package (a record object, the caller's frame looked up, a lock and a
    formatting pass per handler) would be a good share of a short connection's cost. Lines
    for stderr and the logfile are formatted once and written directly; anything unusual
    (syslog, exception info) takes the standard path.
    """

    streams: list[TextIO] = []
    slow = False  # a handler other than the streams (syslog) is configured

    def _log(self, level: int, msg: object, args: Any, exc_info: Any = None,
             extra: Mapping[str, object] | None = None, stack_info: bool = False,
             stacklevel: int = 1) -> None:
        if self.slow or exc_info or extra or stack_info:
            super()._log(level, msg, args, exc_info, extra, stack_info, stacklevel)
            return
        try:
            text = str(msg) % args if args else str(msg)
        except (TypeError, ValueError):  # a bad format: let logging report it, as it would
            super()._log(level, msg, args, exc_info, extra, stack_info, stacklevel)
            return
        line = line_of(time.time(), level, os.getpid(), text) + "\n"
        for stream in self.streams:
            try:
                stream.write(line)
                stream.flush()
            except (OSError, ValueError):
                pass  # a closed or full output must not take the pooler down


log = PgusherLogger(LOGGER_NAME)
logging.Logger.manager.loggerDict[LOGGER_NAME] = log  # so setLevel clears its cache too


class SyslogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        word = _LEVEL_WORDS.get(record.levelno, record.levelname)
        return f"{word} {record.getMessage()}"


def setup(*, verbose: int = 0, quiet: bool = False, logfile: str = "", syslog: bool = False,
          syslog_ident: str = "pgusher", syslog_facility: str = "daemon") -> None:
    """(Re)configure handlers; safe to call again on reload."""
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    log.propagate = False
    level = logging.INFO
    if verbose == 1:
        level = logging.DEBUG
    elif verbose >= 2:
        level = NOISE
    log.setLevel(level)
    fmt = PgbouncerFormatter()
    for stream in PgusherLogger.streams:
        if stream is not sys.stderr:
            stream.close()
    streams: list[TextIO] = []
    if not quiet:
        streams.append(sys.stderr)
        err = logging.StreamHandler(sys.stderr)
        err.setFormatter(fmt)
        log.addHandler(err)
    unopened = ""
    if logfile:
        try:
            streams.append(open(logfile, "a", encoding="utf-8"))  # noqa: SIM115 - kept open
        except OSError as exc:
            # Start-up checked the file first (startup.check_logfile); this is a reload or a
            # console SET after it went away: keep logging where possible and say why.
            unopened = f"Cannot open logfile: '{logfile}': {os.strerror(exc.errno or 0)}"
        else:
            fh = logging.FileHandler(logfile, encoding="utf-8", delay=True)
            fh.setFormatter(fmt)
            log.addHandler(fh)
    PgusherLogger.streams = streams
    PgusherLogger.slow = False
    if syslog:
        address = "/dev/log" if os.path.exists("/dev/log") else ("localhost", 514)
        facility = logging.handlers.SysLogHandler.facility_names.get(
            syslog_facility, logging.handlers.SysLogHandler.LOG_DAEMON)
        sh = logging.handlers.SysLogHandler(address=address, facility=facility)
        sh.ident = f"{syslog_ident}[{os.getpid()}]: "
        sh.setFormatter(SyslogFormatter())
        log.addHandler(sh)
        PgusherLogger.slow = True  # every line through the handlers, syslog's included
    if not log.handlers:
        log.addHandler(logging.NullHandler())
    if unopened:
        log.error("%s", unopened)
