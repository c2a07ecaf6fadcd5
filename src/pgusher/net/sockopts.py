"""Socket helpers: the tcp_* settings applied to client and server sockets, and a probe of a
unix socket file (is a live process listening on it?)."""

from __future__ import annotations

import asyncio
import os
import socket

from ..config import Settings


def tune_socket(transport: asyncio.BaseTransport, settings: Settings) -> None:
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, int(settings.tcp_keepalive))
        if settings.tcp_keepalive:
            for name, value in (("TCP_KEEPCNT", settings.tcp_keepcnt),
                                ("TCP_KEEPIDLE", settings.tcp_keepidle),
                                ("TCP_KEEPINTVL", settings.tcp_keepintvl)):
                if value and hasattr(socket, name):
                    sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
        if settings.tcp_user_timeout and hasattr(socket, "TCP_USER_TIMEOUT"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT,
                            settings.tcp_user_timeout)
        if settings.tcp_socket_buffer:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, settings.tcp_socket_buffer)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, settings.tcp_socket_buffer)
    except OSError:
        pass  # an option the platform lacks is not worth refusing a connection for


def unix_socket_in_use(path: str) -> bool:
    """Whether a live process answers on the unix socket file ``path``."""
    if not os.path.exists(path):
        return False
    probe = socket.socket(socket.AF_UNIX)
    try:
        probe.connect(path)
    except OSError:
        return False  # a stale file: nobody listens
    finally:
        probe.close()
    return True
