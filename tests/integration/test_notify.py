"""systemd's readiness protocol: READY, RELOADING, STOPPING and WATCHDOG sent to
NOTIFY_SOCKET, by the process systemd started (one pooler, or the supervisor of workers)."""

from __future__ import annotations

import os
import signal
import socket
import tempfile
from collections.abc import Iterator

import pytest
from poolcase import USERLIST, start

from support import PgCluster, PoolerFactory


@pytest.fixture
def manager(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket standing in for systemd's, named in the pooler's environment."""
    directory = tempfile.mkdtemp(prefix="pgusher-notify-")
    os.chmod(directory, 0o777)
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    os.chmod(path, 0o777)
    sock.settimeout(10)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    yield sock
    sock.close()
    os.unlink(path)
    os.rmdir(directory)


def receive(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


@pytest.mark.parametrize("workers", [0, 2])
def test_ready_reloading_and_stopping(pg: PgCluster, pooler: PoolerFactory,
                                      manager: socket.socket, workers: int) -> None:
    if workers:
        proc = pooler({"databases": pooler.databases(),
                       "pgbouncer": {"auth_type": "trust", "pool_mode": "transaction"},
                       "pgusher": {"workers": str(workers)}}, USERLIST)
    else:
        proc = start(pooler)
    ready = receive(manager)
    assert ready[0] == "READY=1" and ready[1].startswith("STATUS=accepting connections")
    with pytest.raises(TimeoutError):  # said once, by one process
        manager.settimeout(1)
        manager.recv(4096)
    manager.settimeout(10)
    proc.signal(signal.SIGHUP)
    reloading = receive(manager)
    assert reloading[0] == "RELOADING=1" and reloading[1].startswith("MONOTONIC_USEC=")
    assert int(reloading[1].split("=")[1]) > 0
    assert receive(manager) == ["READY=1"]
    proc.signal(signal.SIGINT)
    assert receive(manager) == ["STOPPING=1"]
    assert proc.wait_exit(10) == 0


def test_watchdog(pg: PgCluster, pooler: PoolerFactory, manager: socket.socket,
                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    start(pooler)
    assert receive(manager)[0] == "READY=1"
    assert receive(manager) == ["WATCHDOG=1"]
    assert receive(manager) == ["WATCHDOG=1"]


def test_no_socket_no_messages(pg: PgCluster, pooler: PoolerFactory,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    proc = start(pooler)
    proc.signal(signal.SIGHUP)
    proc.signal(signal.SIGINT)
    assert proc.wait_exit(10) == 0
    assert "notify" not in proc.log_text()
