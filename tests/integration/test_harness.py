"""The test fixtures themselves, exercised against PostgreSQL directly."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

import psycopg
import pytest

from support import (
    PASSWORDS,
    PgCluster,
    PgError,
    libpq_dsn,
    parse_pgbench,
    run_pgbench,
    run_psql,
)
from support.faults import FaultProxy
from support.pooler import _ini_value, render_ini, write_userlist


@pytest.mark.parametrize("user", sorted(PASSWORDS))
def test_each_test_user_connects(pg: PgCluster, user: str) -> None:
    with psycopg.connect(pg.dsn(user), connect_timeout=10) as conn:
        row = conn.execute("SELECT current_user, current_database()").fetchone()
    assert row == (user, "app")


@pytest.mark.parametrize(
    ("user", "method"),
    [
        ("scram_user", "SCRAM-SHA-256$"),
        ("md5_user", "md5"),
        ("plain_user", "SCRAM-SHA-256$"),
        ("postgres", "SCRAM-SHA-256$"),
    ],
)
def test_password_storage(pg: PgCluster, user: str, method: str) -> None:
    stored = pg.sql(f"SELECT rolpassword FROM pg_authid WHERE rolname = '{user}'", "postgres")
    assert stored.startswith(method)


@pytest.mark.parametrize("user", ["scram_user", "md5_user", "plain_user", "postgres"])
def test_wrong_password_rejected(pg: PgCluster, user: str) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pg.dsn(user, password="wrong"), connect_timeout=10)


def test_test_users_can_create_tables(pg: PgCluster) -> None:
    with psycopg.connect(pg.dsn("scram_user")) as conn:
        conn.execute("CREATE TEMP TABLE t (x int)")
        conn.execute("CREATE TABLE IF NOT EXISTS harness_scram (x int)")
        conn.execute("DROP TABLE harness_scram")


def test_sql_and_connections(pg: PgCluster) -> None:
    assert pg.sql("SELECT 1") == "1"
    assert pg.sql("SELECT 1; SELECT 2") == "1\n2"
    with pytest.raises(PgError, match="does_not_exist"):
        pg.sql("SELECT * FROM does_not_exist")
    before = pg.connections("md5_user")
    with psycopg.connect(pg.dsn("md5_user")), psycopg.connect(pg.dsn("md5_user")):
        assert pg.connections("md5_user") == before + 2
        assert pg.connections() >= 2
    assert pg.connections("md5_user") == before


def test_stop_start(pg: PgCluster) -> None:
    conn = psycopg.connect(pg.dsn())
    pg.stop()
    assert not pg.is_running()
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    conn.close()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg.dsn(), connect_timeout=2)
    pg.start()
    with psycopg.connect(pg.dsn()) as conn2:
        assert conn2.execute("SELECT 1").fetchone() == (1,)


def test_restart_keeps_data(pg: PgCluster) -> None:
    pg.sql(
        "CREATE TABLE IF NOT EXISTS harness_restart (x int); INSERT INTO harness_restart VALUES (7)"
    )
    pg.restart()
    try:
        assert pg.sql("SELECT x FROM harness_restart") == "7"
    finally:
        pg.sql("DROP TABLE harness_restart")


def test_run_psql(pg: PgCluster) -> None:
    res = run_psql(pg.dsn("plain_user"), "SELECT current_user")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "plain_user"
    res = run_psql(
        ["-h", pg.socket_dir, "-p", str(pg.port), "-U", "postgres", "-d", "app"],
        input="SELECT 40 + 2;\n",
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "42"
    res = run_psql(pg.dsn("plain_user", password="nope"), "SELECT 1")
    assert res.returncode != 0
    assert "password authentication failed" in res.stderr


def test_pgbench_against_server(pg: PgCluster, tmp_path: Path) -> None:
    script = tmp_path / "one.sql"
    script.write_text("SELECT 1;\n")
    rc, out, err = run_pgbench(
        ["-n", "-f", str(script), "-c", "2", "-j", "1", "-t", "50", pg.dsn("scram_user")]
    )
    assert rc == 0, err
    res = parse_pgbench(out, err)
    assert res.transactions == 100
    assert res.failed == 0
    assert res.tps is not None and res.tps > 0
    assert res.latency_avg_ms is not None
    assert res.ok


PGBENCH_15_OUTPUT = """\
pgbench (15.20 (Debian 15.20-0+deb12u1))
transaction type: <builtin: select only>
scaling factor: 1
query mode: simple
number of clients: 4
number of threads: 2
maximum number of tries: 1
duration: 2 s
number of transactions actually processed: 720
number of failed transactions: 3 (0.415%)
latency average = 11.121 ms
average connection time = 5.471 ms
tps = 359.671799 (including reconnection times)
"""


def test_parse_pgbench() -> None:
    res = parse_pgbench(
        PGBENCH_15_OUTPUT,
        "pgbench: error: client 2 script 0 aborted in command 0 query 0: ERROR:  boom\n",
    )
    assert res.tps == pytest.approx(359.671799)
    assert res.latency_avg_ms == pytest.approx(11.121)
    assert res.transactions == 720
    assert res.failed == 3
    assert res.aborted_clients == 1
    assert res.connection_time_ms == pytest.approx(5.471)
    assert not res.ok
    empty = parse_pgbench("", "connection refused")
    assert empty.tps is None and not empty.ok


def test_config_file_helpers(tmp_path: Path) -> None:
    path = tmp_path / "userlist.txt"
    write_userlist(path, {"alice": 'pa"ss', "bob": ""})
    assert path.read_text() == '"alice" "pa""ss"\n"bob" ""\n'
    text = render_ini({"databases": {"app": "host=h dbname=app"}, "pgbouncer": {"a": "1"}})
    assert text == "[databases]\napp = host=h dbname=app\n\n[pgbouncer]\na = 1\n"
    assert _ini_value(text + "; c\n[pgbouncer]\nA=2\n", "pgbouncer", "a") == "2"
    assert libpq_dsn(host="h", password="a b'c", port=None) == "host=h password='a b\\'c'"


# ---------------------------------------------------------------------------------- fault proxy


class Recorder:
    """A TCP server that records the size of every read (for the splitter)."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with self.sock:
            conn, _ = self.sock.accept()
        with conn, contextlib.suppress(ConnectionError):  # closing the proxy resets
            while chunk := conn.recv(65536):
                self.sizes.append(len(chunk))
                conn.sendall(chunk)


def test_fault_proxy_splits_writes() -> None:
    recorder = Recorder()
    with FaultProxy(recorder.port) as proxy:
        proxy.upstream.split = 1
        proxy.upstream.pause = 0.002  # so that the reader sees the pieces apart
        with socket.create_connection((proxy.host, proxy.port)) as sock:
            sock.sendall(b"x" * 40)
            got = b""
            while len(got) < 40:
                got += sock.recv(100)
    recorder.thread.join(5)
    assert got == b"x" * 40
    assert len(recorder.sizes) >= 30 and max(recorder.sizes) <= 2  # read one by one


def test_fault_proxy_delay_stall_and_resume(pg: PgCluster) -> None:
    with FaultProxy(pg.port) as proxy:
        dsn = libpq_dsn(**pg.params("postgres", port=proxy.port))
        with psycopg.connect(dsn, autocommit=True) as conn:
            proxy.downstream.delay = 0.2
            began = time.monotonic()
            assert conn.execute("select 1").fetchone() == (1,)
            assert time.monotonic() - began >= 0.2
            proxy.downstream.delay = 0
            proxy.stall()
            answered = threading.Event()
            waiter = threading.Thread(
                target=lambda: (conn.execute("select 2").fetchone(), answered.set()))
            waiter.start()
            assert not answered.wait(0.5)
            proxy.resume()
            assert answered.wait(5)
            waiter.join()


def test_fault_proxy_resets_inside_a_message(pg: PgCluster) -> None:
    with FaultProxy(pg.port) as proxy:
        dsn = libpq_dsn(**pg.params("postgres", port=proxy.port))
        with psycopg.connect(dsn, autocommit=True) as conn:
            proxy.downstream.reset_after(100_000)
            with pytest.raises(psycopg.OperationalError):
                conn.execute("select repeat('x', 100) from generate_series(1, 100000)")
            assert proxy.downstream.reset_done.is_set()
        # The proxy still serves new connections; reset_all cuts the open ones.
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
            proxy.reset_all()
            with pytest.raises(psycopg.OperationalError):
                conn.execute("select 1")
