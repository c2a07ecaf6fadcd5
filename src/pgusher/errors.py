"""One small error tree.

Every error the pooler can raise toward a client carries an SQLSTATE and a severity, so the
network layer turns any of them into an ErrorResponse at a single boundary. Errors that are the
operator's (configuration) carry a file and line instead and never reach a client.
"""

from __future__ import annotations

import errno
import os


class PgusherError(Exception):
    """Base class. ``sqlstate`` and ``severity`` describe how a client sees it."""

    sqlstate = "XX000"
    severity = "ERROR"

    def __init__(self, message: str, *, sqlstate: str | None = None,
                 severity: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if sqlstate is not None:
            self.sqlstate = sqlstate
        if severity is not None:
            self.severity = severity


class ConfigError(PgusherError):
    """A configuration file could not be read or holds a bad value (operator's fault)."""

    sqlstate = "F0000"


class StartupError(PgusherError):
    """The machine does not let the pooler start: a file it cannot write, a port another
    process holds, the user it must run as (operator's fault, reported as one FATAL line)."""

    sqlstate = "58000"


def listen_error(where: str, exc: OSError) -> StartupError:
    """PgBouncer's words for a socket it cannot bind: ``cannot listen on ADDR: bind(): ...``."""
    reason = os.strerror(exc.errno or errno.EINVAL)
    return StartupError(f"cannot listen on {where}: bind(): {reason}")


class ProtocolError(PgusherError):
    """The peer broke the wire protocol: malformed, oversized or unexpected message."""

    sqlstate = "08P01"
    severity = "FATAL"


class AuthError(PgusherError):
    """Authentication failed; the message is safe to show to the client."""

    sqlstate = "28P01"
    severity = "FATAL"


class ClientFatal(PgusherError):
    """A condition that ends the client's connection (pool limits, unknown database...)."""

    severity = "FATAL"
    sqlstate = "08P01"


class ServerError(PgusherError):
    """A server connection failed to connect or log in.

    ``transient``: the server is there but not taking connections for now (refused, reset,
    timed out, shutting down or starting up, too many clients), as during a restart; a
    wrong password, an unknown database or a TLS mismatch is not. ``unreachable``: no
    connection came about at all (refused, unreachable, timed out); as PgBouncer, the
    waiting clients stay queued for the next attempt.
    """

    sqlstate = "08006"

    def __init__(self, message: str, *, sqlstate: str | None = None,
                 severity: str | None = None, transient: bool = False,
                 unreachable: bool = False) -> None:
        super().__init__(message, sqlstate=sqlstate, severity=severity)
        self.transient = transient or unreachable
        self.unreachable = unreachable
