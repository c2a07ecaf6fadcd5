"""systemd's readiness protocol (sd_notify), without libsystemd.

Strategy: a ``Type=notify`` service is started with NOTIFY_SOCKET in its environment, the
path (or, starting with ``@``, the abstract name) of a datagram socket. The process systemd
started sends one datagram per change: ``READY=1`` once clients can connect, ``RELOADING=1``
with ``MONOTONIC_USEC`` when a reload begins and ``READY=1`` when it is done, ``STOPPING=1``
when shutdown begins, and ``WATCHDOG=1`` every half ``WATCHDOG_USEC`` when the unit asks for a
watchdog. Without NOTIFY_SOCKET every call does nothing. Only the process systemd started
speaks: worker processes forget the socket right after they are forked (:func:`forget`).
"""

from __future__ import annotations

import os
import socket
import time

from ..log import log

_VAR = "NOTIFY_SOCKET"


def notify(*states: str) -> bool:
    """Send ``states`` (``"READY=1"``, ...) as one message; False when there is no socket
    or it cannot be reached (logged once per call, never raised)."""
    path = os.environ.get(_VAR, "")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(states).encode())
    except OSError as exc:
        log.warning("cannot notify the service manager at %s: %s", path, exc)
        return False
    return True


def reloading() -> bool:
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}")


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 messages, when the unit has a watchdog meant for us."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) <= 0 or not os.environ.get(_VAR):
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 1e6 / 2


def forget() -> None:
    """In a forked worker: only the process systemd started talks to it."""
    os.environ.pop(_VAR, None)
    os.environ.pop("WATCHDOG_USEC", None)
    os.environ.pop("WATCHDOG_PID", None)
