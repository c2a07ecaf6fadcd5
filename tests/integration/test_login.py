"""Client authentication, server login methods, startup packet handling."""

from __future__ import annotations

import asyncio
import socket
import struct

import asyncpg
import psycopg
import pytest
from poolcase import USERLIST, start

from pgusher.auth.md5 import md5_password_hash
from pgusher.auth.scram import format_scram_secret, make_scram_secret
from support import PgCluster, PoolerFactory, run_psql
from support.wire import EOF, TERMINATE, RawConn, query, startup_packet
from support.wire import message as wire_message


def forced_user_db(pg: PgCluster) -> dict[str, str]:
    return {"app": f"host=127.0.0.1 port={pg.port} dbname=app user=postgres password=postgres"}


def failure_text(auth_type: str, user: str) -> str:
    """PgBouncer's words for a failed login by each method (with the user, as PostgreSQL)."""
    if auth_type == "trust":
        return '"trust" authentication failed'
    if auth_type == "scram-sha-256":
        return f'SASL authentication failed for user "{user}"'
    return f'password authentication failed for user "{user}"'


def secrets_for(password: str, user: str) -> dict[str, str]:
    return {
        "plain": password,
        "md5": md5_password_hash(user, password),
        "scram": format_scram_secret(make_scram_secret(password)),
    }


@pytest.mark.parametrize("auth_type,stored", [
    ("plain", "plain"), ("plain", "md5"), ("plain", "scram"),
    ("md5", "plain"), ("md5", "md5"), ("md5", "scram"),
    ("scram-sha-256", "plain"), ("scram-sha-256", "scram"),
])
def test_client_auth_methods(pg: PgCluster, pooler: PoolerFactory, auth_type: str,
                             stored: str) -> None:
    secret = secrets_for("s3cret", "alice")[stored]
    proc = start(pooler, databases=forced_user_db(pg), auth_type=auth_type,
                 userlist={"alice": secret})
    with psycopg.connect(proc.dsn("alice", "s3cret")) as conn:
        assert conn.execute("select current_user").fetchone() == ("postgres",)
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(proc.dsn("alice", "wrong"))
    # md5 turns to SCRAM for a SCRAM secret, as PgBouncer does
    method = "scram-sha-256" if stored == "scram" and auth_type == "md5" else auth_type
    assert failure_text(method, "alice") in str(err.value)
    assert getattr(err.value, "sqlstate", None) in ("28P01", None)
    assert f"closing because: {failure_text(method, 'alice')}" in proc.log_text()


def test_scram_cannot_use_md5_secret(pg: PgCluster, pooler: PoolerFactory) -> None:
    proc = start(pooler, databases=forced_user_db(pg), auth_type="scram-sha-256",
                 userlist={"alice": md5_password_hash("alice", "pw")})
    with pytest.raises(psycopg.OperationalError, match="SASL authentication failed"):
        psycopg.connect(proc.dsn("alice", "pw"))


@pytest.mark.parametrize("auth_type", ["md5", "scram-sha-256", "plain", "trust"])
def test_unknown_user_gets_the_same_error(pg: PgCluster, pooler: PoolerFactory,
                                          auth_type: str) -> None:
    """An unknown user fails as a wrong password would, in PgBouncer's words per method."""
    proc = start(pooler, databases=forced_user_db(pg), auth_type=auth_type,
                 userlist={"alice": "pw"})
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(proc.dsn("mallory", "pw"))
    assert failure_text(auth_type, "mallory") in str(err.value)
    assert f"closing because: {failure_text(auth_type, 'mallory')}" in proc.log_text()
    if auth_type != "trust":
        with pytest.raises(psycopg.OperationalError) as wrong:
            psycopg.connect(proc.dsn("alice", "wrong"))
        assert failure_text(auth_type, "alice") in str(wrong.value)


def test_trust_and_any(pg: PgCluster, pooler: PoolerFactory) -> None:
    proc = start(pooler, databases=forced_user_db(pg), auth_type="any", userlist={})
    with psycopg.connect(proc.dsn("whoever", "x")) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


@pytest.mark.parametrize("user", ["scram_user", "md5_user", "plain_user", "trust_user"])
def test_server_login_methods(pg: PgCluster, pooler: PoolerFactory, user: str) -> None:
    """The pooler logs in to PostgreSQL with SCRAM, md5, cleartext and trust as pg_hba says."""
    proc = start(pooler)
    with psycopg.connect(proc.dsn(user, "ignored")) as conn:
        assert conn.execute("select current_user").fetchone() == (user,)


def test_server_md5_login_with_stored_hash(pg: PgCluster, pooler: PoolerFactory) -> None:
    proc = start(pooler, userlist={"md5_user": md5_password_hash("md5_user", "md5_pass")})
    with psycopg.connect(proc.dsn("md5_user", "x")) as conn:
        assert conn.execute("select current_user").fetchone() == ("md5_user",)


def test_server_login_failure_reaches_client(pg: PgCluster, pooler: PoolerFactory) -> None:
    proc = start(pooler, userlist={**USERLIST, "scram_user": "not-the-password"})
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(proc.dsn("scram_user", "x"))
    assert 'password authentication failed for user "scram_user"' in str(err.value)
    # Other users are unaffected.
    with psycopg.connect(proc.dsn("postgres", "x")) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_psql_over_tcp_and_unix_socket(pg: PgCluster, pooler: PoolerFactory) -> None:
    proc = start(pooler)
    tcp = run_psql(proc.dsn("postgres"), "select 'tcp'")
    unix = run_psql(["-h", proc.socket_dir, "-p", str(proc.port), "-U", "postgres", "app"],
                    "select 'unix'")
    assert (tcp.returncode, tcp.stdout.strip()) == (0, "tcp"), tcp.stderr
    assert (unix.returncode, unix.stdout.strip()) == (0, "unix"), unix.stderr


def test_ssl_request_is_refused_politely(pg: PgCluster, pooler: PoolerFactory) -> None:
    proc = start(pooler)
    ok = run_psql(proc.dsn("postgres", sslmode="prefer"), "select 1")
    assert ok.returncode == 0 and ok.stdout.strip() == "1"
    refused = run_psql(proc.dsn("postgres", sslmode="require"), "select 1")
    assert refused.returncode != 0
    assert "server does not support SSL" in refused.stderr


def test_no_such_database(pg: PgCluster, pooler: PoolerFactory) -> None:
    proc = start(pooler)
    with pytest.raises(psycopg.OperationalError, match="no such database: nope"):
        psycopg.connect(proc.dsn("postgres", dbname="nope"))


def test_fallback_database(pg: PgCluster, pooler: PoolerFactory) -> None:
    pg.sql("select 1", "postgres")
    proc = start(pooler, databases={"*": f"host=127.0.0.1 port={pg.port}"})
    with psycopg.connect(proc.dsn("postgres", dbname="postgres")) as conn:
        assert conn.execute("select current_database()").fetchone() == ("postgres",)
    with psycopg.connect(proc.dsn("postgres", dbname="app")) as conn:
        assert conn.execute("select current_database()").fetchone() == ("app",)


def test_startup_parameters_become_session_settings(pg: PgCluster,
                                                    pooler: PoolerFactory) -> None:
    """Where PgBouncer refuses them, pgusher applies them; ignore_startup_parameters still
    drops the listed ones and replication connections are refused."""
    proc = start(pooler, pool_size=1, ignore_startup_parameters="search_path")

    async def settings(server_settings: dict[str, str]) -> tuple[str, str]:
        conn = await asyncpg.connect(host=proc.host, port=proc.port, user="postgres",
                                     database="app", server_settings=server_settings)
        try:
            row = await conn.fetchrow("select current_setting('extra_float_digits'), "
                                      "current_setting('search_path')")
            assert row is not None
            return str(row[0]), str(row[1])
        finally:
            await conn.close()

    digits, path = asyncio.run(settings({"extra_float_digits": "2", "search_path": "nope"}))
    assert digits == "2"
    assert path == '"$user", public'  # dropped by ignore_startup_parameters
    # ... also when it comes inside options (-c name=value), where the others still apply
    options = "-c search_path=nope -c work_mem=7MB"
    with psycopg.connect(proc.dsn("postgres", options=options)) as conn:
        row = conn.execute("select current_setting('search_path'), "
                           "current_setting('work_mem')").fetchone()
    assert row == ('"$user", public', "7MB")
    with pytest.raises(psycopg.OperationalError,
                       match="unsupported startup parameter: replication"):
        psycopg.connect(proc.dsn("postgres", replication="database"))


def raw_startup(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload)
        chunks = []
        while True:
            data = sock.recv(4096)
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)


@pytest.mark.parametrize("payload,expected", [
    (struct.pack("!ii", 8, 0x00020000), b"unsupported frontend protocol 2.0"),
    (struct.pack("!ii", 12, 196608) + b"us\0x", b"invalid startup packet layout"),
    (struct.pack("!ii", 9, 196608) + b"\0", b"no username supplied"),
])
def test_malformed_startup_gets_clear_fatal(pg: PgCluster, pooler: PoolerFactory,
                                            payload: bytes, expected: bytes) -> None:
    proc = start(pooler)
    reply = raw_startup(proc.port, payload)
    assert reply[:1] == b"E" and b"FATAL" in reply and expected in reply
    # The pooler keeps serving everyone else.
    with psycopg.connect(proc.dsn("postgres")) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


@pytest.mark.parametrize("payload", [
    b"X\0\0\0\4",  # Terminate before any startup packet
    b"Q\0\0\0\15select 1\0",
    struct.pack("!i", 3) + b"xyz",
    struct.pack("!i", 7) + b"\0\0\0",
    struct.pack("!i", 20000),
], ids=["terminate", "query", "length 3", "length 7", "length 20000"])
def test_startup_packet_of_invalid_length_is_closed_without_a_reply(
        pg: PgCluster, pooler: PoolerFactory, payload: bytes) -> None:
    """PostgreSQL only logs "invalid length of startup packet" and closes (a client that
    connects and leaves at once, or something that is not a PostgreSQL client)."""
    direct = socket.socket(socket.AF_UNIX)
    direct.settimeout(5)
    direct.connect(f"{pg.socket_dir}/.s.PGSQL.{pg.port}")
    with direct:
        direct.sendall(payload)
        assert direct.recv(4096) == b""
    proc = start(pooler)
    assert raw_startup(proc.port, payload) == b""
    assert "invalid length of startup packet" in proc.log_text()
    with psycopg.connect(proc.dsn("postgres")) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


@pytest.mark.parametrize("auth_type,user,what", [("scram-sha-256", "postgres", "SASL"),
                                                  ("md5", "md5_user", "password")])
@pytest.mark.parametrize("instead", [TERMINATE, query("select 1")], ids=["terminate", "query"])
def test_other_message_instead_of_password_is_answered_as_postgres_does(
        pg: PgCluster, pooler: PoolerFactory, auth_type: str, user: str, what: str,
        instead: bytes) -> None:
    proc = start(pooler, auth_type=auth_type)
    seen = []
    for port in (pg.port, proc.port):
        with RawConn.tcp(port) as conn:
            conn.send(startup_packet(user))
            assert conn.read_message()[0] == "R"
            conn.send(instead)
            seen.append(conn.read_to_eof())
    assert seen[0] == seen[1] == [
        ("E", "FATAL", "08P01", f"expected {what} response, got message type {instead[0]}"),
        ("EOF",)]


def test_garbage_after_login_is_a_protocol_error(pg: PgCluster, pooler: PoolerFactory) -> None:
    proc = start(pooler)
    with psycopg.connect(proc.dsn("postgres")) as conn:
        sock = socket.socket(fileno=conn.pgconn.socket)
        try:
            sock.sendall(b"?\x00\x00\x00\x04")
        finally:
            sock.detach()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("select 1")
    assert "invalid frontend message type 63" in proc.log_text()
    with psycopg.connect(proc.dsn("postgres")) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_max_client_conn(pg: PgCluster, pooler: PoolerFactory) -> None:
    proc = start(pooler, max_client_conn=2)
    first = psycopg.connect(proc.dsn("postgres"))
    second = psycopg.connect(proc.dsn("postgres"))
    with pytest.raises(psycopg.OperationalError,
                       match=r"no more connections allowed \(max_client_conn\)"):
        psycopg.connect(proc.dsn("postgres"))
    assert first.execute("select 1").fetchone() == (1,)
    assert second.execute("select 2").fetchone() == (2,)
    first.close()
    with psycopg.connect(proc.dsn("postgres")) as third:
        assert third.execute("select 3").fetchone() == (3,)
    second.close()


def test_application_name_add_host(pg: PgCluster, pooler: PoolerFactory) -> None:
    proc = start(pooler, application_name_add_host=1)
    with psycopg.connect(proc.dsn("postgres", application_name="web"), autocommit=True) as c:
        row = c.execute("show application_name").fetchone()
        assert row is not None and row[0].startswith("web - 127.0.0.1:")


@pytest.mark.parametrize("key,where", [
    ("max_db_client_connections", "pgbouncer"),
    ("max_user_client_connections", "pgbouncer"),
])
def test_client_count_limits(pg: PgCluster, pooler: PoolerFactory, key: str, where: str) -> None:
    proc = start(pooler, **{key: 1})
    first = psycopg.connect(proc.dsn("postgres"), autocommit=True)
    with pytest.raises(psycopg.OperationalError, match=rf"client connections exceeded \({key}\)"):
        psycopg.connect(proc.dsn("postgres"))
    first.close()
    with psycopg.connect(proc.dsn("postgres"), autocommit=True) as again:
        assert again.execute("select 1").fetchone() == (1,)


@pytest.mark.parametrize("settings,message", [
    ({"auth_type": "pam"}, "not supported by this pgusher version: auth_type = pam"),
    ({"disable_pqexec": "1"}, "not supported by this pgusher version: disable_pqexec = 1"),
    ({"auth_type": "hba"}, "auth_type = hba needs auth_hba_file"),
    ({"client_tls_sslmode": "require"},
     "client_tls_sslmode = require needs client_tls_key_file and client_tls_cert_file"),
    ({"auth_type": "cert"}, "auth_type = cert needs client_tls_sslmode other than disable"),
])
def test_settings_not_honoured_are_refused(pg: PgCluster, pooler: PoolerFactory,
                                           settings: dict[str, str], message: str) -> None:
    """Better not to start than to quietly run without TLS or without the HBA rules."""
    from support import PoolerError

    with pytest.raises(PoolerError, match=message):
        start(pooler, **settings)


# ---------------------------------------------------------------------------------- pipelined

_SELECT_ONE = [("T",), ("D", "1"), ("C",), ("Z", "I")]


def _login_replies(conn: RawConn) -> list[str]:
    replies = conn.read_until_ready()
    assert replies[-1] == ("Z", "I") and not [r for r in replies if r[0] == "E"], replies
    return [r[0] for r in replies]


def test_work_sent_with_the_startup_packet_waits_for_the_welcome(
        pg: PgCluster, pooler: PoolerFactory) -> None:
    """A query written together with the startup packet is answered after the welcome, both
    while the pool still learns its server's parameters and once it knows them."""
    proc = start(pooler)
    for _ in range(2):
        with RawConn.tcp(proc.port) as conn:
            conn.send(startup_packet() + query("select 1"))
            assert _login_replies(conn)[0] == "R"
            assert conn.read_until_ready() == _SELECT_ONE


def test_work_sent_with_the_password_waits_for_the_welcome(
        pg: PgCluster, pooler: PoolerFactory) -> None:
    """A query written together with the password message, the message itself cut apart."""
    proc = start(pooler, auth_type="plain")
    for cut in (0, 1):
        with RawConn.tcp(proc.port) as conn:
            conn.send(startup_packet("plain_user"))
            assert conn.read_message() == ("R",)  # AuthenticationCleartextPassword
            data = wire_message(b"p", b"plain_pass\0") + query("select 1")
            if cut:
                conn.send_in_pieces(data[:9], size=cut)
                conn.send(data[9:])
            else:
                conn.send(data)
            assert _login_replies(conn)[0] == "R"
            assert conn.read_until_ready() == _SELECT_ONE


def test_console_password_in_pieces_and_a_query_behind_it(
        pg: PgCluster, pooler: PoolerFactory) -> None:
    proc = start(pooler, auth_type="plain", admin_users="postgres")
    with RawConn.tcp(proc.port) as conn:
        conn.send(startup_packet("postgres", "pgbouncer"))
        assert conn.read_message() == ("R",)
        data = wire_message(b"p", b"postgres\0") + query("SHOW VERSION")
        conn.send_in_pieces(data[:7], size=1)
        conn.send(data[7:])
        assert _login_replies(conn)[0] == "R"
        replies = conn.read_until_ready()
        assert [r[0] for r in replies] == ["T", "D", "C", "Z"], replies


@pytest.mark.parametrize("mode", ["transaction", "session", "statement"])
def test_terminate_sent_with_the_startup_packet(pg: PgCluster, pooler: PoolerFactory,
                                                mode: str) -> None:
    """What node-postgres does on connect() then end(): the startup packet and Terminate in
    one write (and the same with a query between them). PostgreSQL logs the client in,
    answers the query, then closes; so does the pooler."""
    proc = start(pooler, mode)
    for _ in range(2):  # the pool learning its server's parameters, then knowing them
        with RawConn.tcp(proc.port, timeout=5) as conn:
            conn.send(startup_packet() + wire_message(b"X"))
            replies = conn.read_to_eof()
            assert replies[0] == ("R",) and ("Z", "I") in replies and replies[-1] == EOF
        with RawConn.tcp(proc.port, timeout=5) as conn:
            conn.send(startup_packet() + query("select 1") + wire_message(b"X"))
            replies = conn.read_to_eof()
            assert replies[-5:] == [*_SELECT_ONE, EOF], replies


@pytest.mark.parametrize("length", [65530, 65531, 70000])
def test_very_long_cleartext_password(pg: PgCluster, pooler: PoolerFactory,
                                      length: int) -> None:
    """A password as long as a password message may carry logs in; a longer one is refused
    at once, not left hanging."""
    password = "p" * length
    proc = start(pooler, databases=forced_user_db(pg), auth_type="plain",
                 userlist={"alice": "p" * 65530})
    dsn = proc.dsn("alice", password, connect_timeout=5)
    if length == 65530:
        with psycopg.connect(dsn) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
        return
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(dsn)
    assert "timeout" not in str(err.value)
