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

LOGGER_NAME = "pgusher"
log = logging.getLogger(LOGGER_NAME)

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
    """One line per record, made once however many handlers (stderr, logfile) write it."""

    _second = -1
    _stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        line: str | None = record.__dict__.get("pgusher_line")
        if line is not None:
            return line
        second = int(record.created)
        if second != self._second:  # strftime once a second, not once a line
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(second))
            self._second = second
        millis = int(record.msecs)
        word = _LEVEL_WORDS.get(record.levelno, record.levelname)
        line = f"{self._stamp}.{millis:03d} UTC [{record.process}] {word} {record.getMessage()}"
        record.pgusher_line = line
        return line


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
    if not quiet:
        err = logging.StreamHandler(sys.stderr)
        err.setFormatter(fmt)
        log.addHandler(err)
    if logfile:
        fh = logging.FileHandler(logfile, encoding="utf-8")
        fh.setFormatter(fmt)
        log.addHandler(fh)
    if syslog:
        address = "/dev/log" if os.path.exists("/dev/log") else ("localhost", 514)
        facility = logging.handlers.SysLogHandler.facility_names.get(
            syslog_facility, logging.handlers.SysLogHandler.LOG_DAEMON)
        sh = logging.handlers.SysLogHandler(address=address, facility=facility)
        sh.ident = f"{syslog_ident}[{os.getpid()}]: "
        sh.setFormatter(SyslogFormatter())
        log.addHandler(sh)
    if not log.handlers:
        log.addHandler(logging.NullHandler())
