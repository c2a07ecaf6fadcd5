"""Clients that send what no driver would: odd chunking, stray or malformed messages.

Each case is checked against what PostgreSQL itself does with the same bytes where that
matters; the pooler keeps serving everyone else either way.
"""

from __future__ import annotations

import time

import pytest
from poolcase import start

from support import PgCluster, PoolerFactory
from support.wire import RawConn, message, query

MODES = ["transaction", "statement", "session"]

SELECT_ONE = [("T",), ("D",), ("C",), ("Z", "I")]


@pytest.mark.parametrize("mode", MODES)
def test_messages_in_one_byte_writes(pg: PgCluster, pooler: PoolerFactory, mode: str) -> None:
    """Every header and body cut apart by the network still makes whole messages."""
    proc = start(pooler, mode)
    with RawConn.tcp(proc.port) as conn:
        conn.login()
        conn.send_in_pieces(query("select 1"))
        assert conn.read_until_ready() == SELECT_ONE
        extended = (message(b"P", b"\0select 2\0\0\0") + message(b"B", b"\0\0\0\0\0\0\0\0")
                    + message(b"E", b"\0\0\0\0\0") + message(b"S"))
        conn.send_in_pieces(extended)
        assert conn.read_until_ready() == [("1",), ("2",), ("D",), ("C",), ("Z", "I")]
        named = (message(b"P", b"s1\0select 3\0\0\0") + message(b"B", b"\0s1\0\0\0\0\0\0\0")
                 + message(b"E", b"\0\0\0\0\0") + message(b"S"))
        conn.send_in_pieces(named)
        assert conn.read_until_ready() == [("1",), ("2",), ("D",), ("C",), ("Z", "I")]
        # A header cut once (the first byte alone, as in a slow network), and a whole query
        # followed by the start of the next.
        q = query("select 1")
        for cut in (1, 3, 5):
            conn.send_in_pieces(q, size=cut, pause=0.05)
            assert conn.read_until_ready() == SELECT_ONE
        conn.send(q + q[:2])
        time.sleep(0.05)
        conn.send(q[2:])
        assert conn.read_until_ready() + conn.read_until_ready() == SELECT_ONE * 2
    assert "Traceback" not in proc.log_text()
