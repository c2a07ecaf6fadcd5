"""so_reuseport and peering, for operators who run several pgusher processes themselves.

Two separate pgusher processes are peers of each other ([peers] and peer_id, as PgBouncer
has them); a cancel request sent to the wrong one is passed to the right one.
"""

from __future__ import annotations

import socket
import struct
import time

import psycopg
from poolcase import USERLIST

from support import PoolerFactory, PoolerProc, free_port


def _read_message(sock: socket.socket) -> tuple[bytes, bytes]:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            assert chunk, "connection closed"
            data += chunk
        return data

    kind, length = struct.unpack("!ci", exactly(5))
    return kind, exactly(length - 4)


def login(port: int) -> tuple[socket.socket, tuple[int, int]]:
    """A raw protocol connection through the pooler; its BackendKeyData."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    body = struct.pack("!i", 196608) + b"user\0postgres\0database\0app\0\0"
    sock.sendall(struct.pack("!i", len(body) + 4) + body)
    key = (0, 0)
    while True:
        kind, payload = _read_message(sock)
        if kind == b"K":
            key = struct.unpack("!ii", payload)
        elif kind == b"E":
            raise AssertionError(payload)
        elif kind == b"Z":
            return sock, key


def send_cancel(port: int, key: tuple[int, int]) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(struct.pack("!iiii", 16, 80877102, *key))
        sock.recv(1)  # the pooler closes the connection once it has the request


def start_peer(pooler: PoolerFactory, peer_id: int, port: int,
               peers: dict[int, int]) -> PoolerProc:
    main = {"pool_mode": "transaction", "auth_type": "trust", "peer_id": str(peer_id),
            "listen_port": str(port), "verbose": "1", "admin_users": "postgres"}
    section = {str(pid): f"host=127.0.0.1 port={pport}" for pid, pport in peers.items()}
    return pooler({"databases": pooler.databases(), "pgbouncer": main, "peers": section},
                  USERLIST, port=port)


def test_cancel_sent_to_a_peer_is_forwarded(pooler: PoolerFactory) -> None:
    port_a, port_b = free_port(), free_port()
    a = start_peer(pooler, 1, port_a, {1: port_a, 2: port_b})
    b = start_peer(pooler, 2, port_b, {1: port_a, 2: port_b})
    sock, key = login(port_a)
    try:
        # The key names its peer as PgBouncer lays it out: bytes 1-2, low byte first.
        raw = struct.pack("!ii", *key)
        assert raw[1] | raw[2] << 8 == 1 and raw[7] & 3 == 3
        q = b"select pg_sleep(20)\0"
        sock.sendall(b"Q" + struct.pack("!i", len(q) + 4) + q)
        time.sleep(0.3)
        started = time.monotonic()
        send_cancel(port_b, key)
        kind, payload = _read_message(sock)
        while kind == b"T":  # the row description comes before the statement runs
            kind, payload = _read_message(sock)
        assert kind == b"E" and b"C57014\0" in payload, payload
        assert time.monotonic() - started < 10
    finally:
        sock.close()
    assert "forwarding cancel request to peer 1" in b.log_text()
    assert "cancel request forwarded to server" in a.log_text()
    with psycopg.connect(a.dsn("postgres", dbname="pgbouncer"), autocommit=True) as admin:
        rows = admin.execute("SHOW PEERS").fetchall()
        assert [(r[0], r[2]) for r in rows] == [(1, port_a), (2, port_b)]


def test_cancel_for_an_unknown_peer_is_dropped(pooler: PoolerFactory) -> None:
    port = free_port()
    a = start_peer(pooler, 1, port, {1: port})
    raw = bytearray(8)
    raw[1], raw[7] = 9, 3  # peer 9, not in [peers]
    send_cancel(port, struct.unpack("!ii", bytes(raw)))
    deadline = time.monotonic() + 5
    while "there is no peer 9 in [peers]" not in a.log_text():
        assert time.monotonic() < deadline, a.log_text()[-2000:]
        time.sleep(0.1)


def test_so_reuseport_lets_two_processes_share_a_port(pooler: PoolerFactory) -> None:
    port = free_port()
    main = {"pool_mode": "transaction", "auth_type": "trust", "so_reuseport": "1",
            "listen_port": str(port), "unix_socket_dir": ""}
    first = pooler({"databases": pooler.databases(), "pgbouncer": main}, USERLIST, port=port)
    second = pooler({"databases": pooler.databases(), "pgbouncer": main}, USERLIST, port=port)
    deadline = time.monotonic() + 15
    while "process up" not in second.log_text():  # its port was open already: the first's
        assert second.is_running() and time.monotonic() < deadline, second.log_text()
        time.sleep(0.1)
    for _ in range(40):
        with psycopg.connect(first.dsn("postgres"), autocommit=True) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
    # The kernel spread the connections over both processes.
    assert "login attempt" in first.log_text() and "login attempt" in second.log_text()
