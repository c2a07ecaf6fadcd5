"""Clients that send what no driver would: odd chunking, stray or malformed messages.

Each case is checked against what PostgreSQL itself does with the same bytes where that
matters; the pooler keeps serving everyone else either way.
"""

from __future__ import annotations

import struct
import time
from pathlib import Path

import pytest
from poolcase import start

from support import PgCluster, PoolerFactory
from support.wire import EOF, SYNC, RawConn, message, query, startup_packet

MODES = ["transaction", "statement", "session"]

SELECT_ONE = [("T",), ("D", "1"), ("C",), ("Z", "I")]


@pytest.mark.parametrize("mode", MODES)
def test_messages_in_one_byte_writes(pg: PgCluster, pooler: PoolerFactory, mode: str) -> None:
    """Every header and body cut apart by the network still makes whole messages."""
    proc = start(pooler, mode)
    with RawConn.tcp(proc.port) as conn:
        conn.login()
        conn.send_in_pieces(query("select 1"))
        assert conn.read_until_ready() == SELECT_ONE
        extended = (message(b"P", b"\0select 1\0\0\0") + message(b"B", b"\0\0\0\0\0\0\0\0")
                    + message(b"E", b"\0\0\0\0\0") + message(b"S"))
        conn.send_in_pieces(extended)
        assert conn.read_until_ready() == [("1",), ("2",), *SELECT_ONE[1:]]
        named = (message(b"P", b"s1\0select 1\0\0\0") + message(b"B", b"\0s1\0\0\0\0\0\0\0")
                 + message(b"E", b"\0\0\0\0\0") + message(b"S"))
        conn.send_in_pieces(named)
        assert conn.read_until_ready() == [("1",), ("2",), *SELECT_ONE[1:]]
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


def backend_pid(conn: RawConn) -> str:
    conn.send(query("select pg_backend_pid()"))
    replies = conn.read_until_ready()
    assert replies[-1] == ("Z", "I"), replies
    return replies[1][1]


STRAYS = {
    # A PasswordMessage outside an authentication exchange, right behind a query.
    "password after query": query("select pg_sleep(0.2)") + message(b"p", b"junk\0"),
    "password alone": message(b"p", b"junk\0"),
    "unknown type": message(b"y", b"junk\0"),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("stray", list(STRAYS))
def test_message_not_allowed_after_login_never_reaches_a_server(
        pg: PgCluster, pooler: PoolerFactory, mode: str, stray: str) -> None:
    """The pooler refuses it as PostgreSQL would (FATAL 08P01) and ends only the sender.

    PostgreSQL dies on such a message: a server that got it would fail whichever client
    it went to next.
    """
    proc = start(pooler, mode, pool_size=1)
    with RawConn.tcp(proc.port) as a, RawConn.tcp(proc.port) as b:
        a.login()
        pid = backend_pid(a)
        b.login()
        a.send(STRAYS[stray])
        kind = STRAYS[stray][-10]
        assert a.read_to_eof()[-2:] == [
            ("E", "FATAL", "08P01", f"invalid frontend message type {kind}"), EOF]
        # The one server is still the same, and serves the next client.
        assert backend_pid(b) == pid
        assert backend_pid(b) == pid
    assert "server conn crashed" not in proc.log_text()


@pytest.mark.parametrize("mode", MODES)
def test_message_cut_short_by_a_leaving_client_is_not_passed_on(
        pg: PgCluster, pooler: PoolerFactory, mode: str) -> None:
    """A client leaves halfway through a message whose start went to its server.

    The server is waiting for the rest of that message: it must not go to another client,
    whose bytes it would read as that rest.
    """
    proc = start(pooler, mode, pool_size=1)
    partial = b"d" + (100).to_bytes(4, "big") + b"x" * 10  # CopyData outside COPY, cut
    with RawConn.tcp(proc.port) as a, RawConn.tcp(proc.port, timeout=5) as b:
        a.login()  # in session mode a takes the only server at login
        a.send(query("select 1") + partial)
        assert a.read_until_ready() == SELECT_ONE
        b.login()
        b.send(query("select 1"))
        time.sleep(0.2)
        a.close()
        assert b.read_until_ready() == SELECT_ONE
        assert backend_pid(b)


@pytest.mark.parametrize("mode", MODES)
def test_stray_copy_data_in_pieces_is_ignored_like_postgres(
        pg: PgCluster, pooler: PoolerFactory, mode: str) -> None:
    """CopyData outside COPY: PostgreSQL ignores it, however it is cut, and so must the
    pooler, whether or not the client has a server when each piece comes."""
    proc = start(pooler, mode, pool_size=1)
    stray = b"d" + (100).to_bytes(4, "big") + b"x" * 96
    with RawConn.tcp(proc.port) as conn:
        conn.login()
        conn.send(stray[:20])
        time.sleep(0.1)
        conn.send(stray[20:60])
        time.sleep(0.1)
        conn.send(stray[60:] + query("select 1"))
        assert conn.read_until_ready() == SELECT_ONE
        assert backend_pid(conn)
    assert "Traceback" not in proc.log_text()


def _parse(name: bytes, sql: bytes) -> bytes:
    return message(b"P", name + b"\0" + sql + b"\0\0\0")


def _bind_execute(name: bytes) -> bytes:
    return (message(b"B", b"\0" + name + b"\0\0\0\0\0\0\0") + message(b"E", b"\0\0\0\0\0")
            + message(b"S"))


# Bodies the pooler reads (names, strings) cut or padded; PostgreSQL answers each with an
# ERROR 08P01 and skips to the next Sync, keeping the connection.
MALFORMED = {
    "parse, no NUL after the query": message(b"P", b"s1\0select 1") + SYNC,
    "parse, no NUL after the name": message(b"P", b"s1") + SYNC,
    "parse unnamed, no NUL after the query": message(b"P", b"\0select 1") + SYNC,
    "parse, types cut": message(b"P", b"s1\0select $1\0\0\x01\0") + SYNC,
    "bind, no NUL after the portal": message(b"B", b"p1") + SYNC,
    "bind, portal only": message(b"B", b"\0") + SYNC,
    "bind, statement name cut": _parse(b"s1", b"select 1") + message(b"B", b"\0s1") + SYNC,
    "describe, no NUL": message(b"D", b"Ss1") + SYNC,
    "describe, bytes after the name": message(b"D", b"Ss1\0x") + SYNC,
    "describe, empty": message(b"D") + SYNC,
    "close, no NUL": message(b"C", b"Ss1") + SYNC,
    "close, bytes after the name": message(b"C", b"Ss1\0x") + SYNC,
    "execute, no NUL": message(b"E", b"p1") + SYNC,
    "query, no NUL": message(b"Q", b"select 1"),
    "query, bytes after the text": message(b"Q", b"select 1\0x\0"),
    "sql prepare, no NUL": message(b"Q", b"prepare s2 as select 1"),
    "in a pipeline": (_parse(b"s1", b"select 1") + message(b"B", b"\0s1") + _bind_execute(b"s1")
                      + query("select 1")),
    "in a transaction": (query("begin") + message(b"P", b"s1\0select 1") + SYNC
                         + query("select 1") + query("rollback")),
}
# Then the statement names must be free and everything work as before.
AFTER = _parse(b"s1", b"select 1") + _bind_execute(b"s1") + query("rollback")


def _ready_count(data: bytes) -> int:
    """How many ReadyForQuery the messages in ``data`` get (one per Query and Sync)."""
    count = pos = 0
    while pos < len(data):
        count += data[pos:pos + 1] in (b"Q", b"S")
        pos += 1 + int.from_bytes(data[pos + 1:pos + 5], "big")
    return count


@pytest.mark.parametrize("mode", MODES)
def test_malformed_bodies_are_answered_as_postgres_answers_them(
        pg: PgCluster, pooler: PoolerFactory, mode: str) -> None:
    proc = start(pooler, mode)
    direct_socket = f"{pg.socket_dir}/.s.PGSQL.{pg.port}"
    differences = {}
    for case, data in MALFORMED.items():
        if mode == "statement" and b"begin" in data:
            continue  # no transaction blocks
        seen = []
        for conn in (RawConn.unix(direct_socket), RawConn.tcp(proc.port)):
            with conn:
                conn.login()
                conn.send(data)
                replies = []
                for _ in range(_ready_count(data)):
                    replies += conn.read_until_ready()
                conn.send(AFTER)
                replies += conn.read_until_ready() + conn.read_until_ready()
                seen.append(replies)
        if seen[0] != seen[1]:
            differences[case] = seen
    assert not differences, "\n".join(f"{case}:\n  postgres {direct}\n  pooler   {pooled}"
                                       for case, (direct, pooled) in differences.items())
    assert "Traceback" not in proc.log_text()


def test_closing_line_is_logged_before_the_fatal_goes_out(pg: PgCluster,
                                                          pooler: PoolerFactory) -> None:
    """A log check made as soon as the client sees its FATAL finds the reason."""
    proc = start(pooler)
    for round_ in range(15):
        with RawConn.tcp(proc.port) as conn:
            conn.login()
            conn.send(message(b"p", b"junk\0"))
            assert conn.read_message()[0] == "E"
            closing = "closing because: invalid frontend message type 112"
            assert Path(proc.log_path).read_text().count(closing) == round_ + 1
        with RawConn.tcp(proc.port) as conn:
            conn.send(startup_packet(database="nosuchdb"))
            assert conn.read_message()[0] == "E"
            closing = "closing because: no such database"
            assert Path(proc.log_path).read_text().count(closing) == round_ + 1


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind,length", [(b"Q", 1 << 30), (b"D", 10001), (b"S", 1 << 20),
                                         (b"X", 20000)])
def test_longer_than_postgres_accepts_is_refused_at_once(
        pg: PgCluster, pooler: PoolerFactory, mode: str, kind: bytes, length: int) -> None:
    """PostgreSQL takes queries and data up to 1 GB and other messages up to 10,000 bytes; a
    longer length closes the connection at once, where waiting for the bytes would hang."""
    proc = start(pooler, mode)
    direct_socket = f"{pg.socket_dir}/.s.PGSQL.{pg.port}"
    for conn in (RawConn.unix(direct_socket), RawConn.tcp(proc.port)):
        with conn:
            conn.login()
            conn.send(kind + struct.pack("!i", length) + b"\0" * 16)
            started = time.monotonic()
            replies = conn.read_to_eof()
            assert time.monotonic() - started < 5
            assert all(r[0] in ("E", "EOF") for r in replies), replies


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("then", ["terminate", "terminate and close"])
def test_query_sent_with_terminate_runs_like_on_postgres(
        pg: PgCluster, pooler: PoolerFactory, mode: str, then: str) -> None:
    """A client writes a query and Terminate together (and maybe closes its socket) while
    every server is taken. PostgreSQL would run the query, then end the session: the pooler
    keeps the query until a server is free, runs it, and only then lets the client go."""
    pg.sql("drop table if exists leaving; create table leaving (x int)")
    proc = start(pooler, mode, pool_size=1)
    with RawConn.tcp(proc.port) as holder, RawConn.tcp(proc.port) as leaver:
        holder.login()
        holder.send(query("begin; select 1"))
        holder.read_until_ready()
        leaver.login()
        leaver.send(query("insert into leaving values (1)") + message(b"X"))
        if then == "terminate and close":
            leaver.close()
        time.sleep(0.3)
        if mode == "session":
            holder.close()  # its server goes to the next client only when it leaves
        else:
            holder.send(query("commit"))
            holder.read_until_ready()
        deadline = time.monotonic() + 5
        while pg.sql("select count(*) from leaving").strip() != "1":
            assert time.monotonic() < deadline, "the query sent with Terminate never ran"
            time.sleep(0.05)
        if then == "terminate":
            assert leaver.read_to_eof() == [("C",), ("Z", "I"), EOF]
    with RawConn.tcp(proc.port) as after:
        after.login()
        after.send(query("select 1"))
        assert after.read_until_ready() == SELECT_ONE


@pytest.mark.parametrize("mode", ["transaction", "statement"])
def test_terminate_behind_work_that_errors_still_ends_the_session(
        pg: PgCluster, pooler: PoolerFactory, mode: str) -> None:
    """Terminate behind a batch whose error makes the server skip a query (its reply never
    comes), or behind extended work without its Sync: the client is let go, never kept
    waiting for replies that will not come (found by scripts/fuzz.py)."""
    proc = start(pooler, mode, pool_size=1)
    batches = [
        # A Close with a broken body: the server skips the Query behind it until the Sync.
        message(b"C", b"copy (select 1) to stdout") + query("select 1") + SYNC
        + message(b"X"),
        # A Bind to an unknown statement and no Sync: PostgreSQL would roll it back.
        message(b"B", b"\0s2\0\0\0\0\0\0\0") + query("rollback") + message(b"X"),
    ]
    for batch in batches:
        with RawConn.tcp(proc.port, timeout=5) as conn:
            conn.login()
            conn.send(batch)
            assert conn.read_to_eof()[-1] == EOF
    with RawConn.tcp(proc.port) as after:
        after.login()
        after.send(query("select 1"))
        assert after.read_until_ready() == SELECT_ONE


@pytest.mark.parametrize("mode", MODES)
def test_server_skipping_to_a_sync_is_not_handed_on(pg: PgCluster, pooler: PoolerFactory,
                                                    mode: str) -> None:
    """A client's Describe fails, so its server skips everything until a Sync; then the
    client sends a Sync behind a message the pooler refuses, and is dropped. The Sync never
    went out: that server must not serve the next client, whose query it would ignore
    (found by scripts/fuzz.py, seed 23, case 4999)."""
    proc = start(pooler, mode, pool_size=1)
    with RawConn.tcp(proc.port) as first:
        first.login()
        first.send(message(b"D", b"S\0"))
        assert first.read_message()[:3] == ("E", "ERROR", "26000")
        first.send(message(b"B", b"\0\0\0\0\0\0\0\0") + SYNC + message(b"7", b"\x00\x01"))
        assert first.read_to_eof()[0][:3] == ("E", "FATAL", "08P01")
    with RawConn.tcp(proc.port, timeout=5) as second:
        second.login()
        second.send(query("select 1"))
        assert second.read_until_ready() == SELECT_ONE
