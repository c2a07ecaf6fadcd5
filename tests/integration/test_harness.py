"""The test fixtures themselves, exercised against PostgreSQL directly."""

from __future__ import annotations

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
