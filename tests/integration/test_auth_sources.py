"""HBA rules, auth_query, SCRAM pass-through, failed logins and auth_fail_delay."""

from __future__ import annotations

import asyncio
import os
import struct
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from poolcase import start

from support import PgCluster, PoolerFactory, PoolerProc
from support.wire import message, startup_packet


def connect_fails(dsn: str, message: str) -> str:
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(dsn)
    assert message in str(err.value), str(err.value)
    return str(err.value)


def current_user(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("select current_user").fetchone()
        assert row is not None
        return str(row[0])


def authid_secret(pg: PgCluster, user: str) -> str:
    return pg.sql(f"select rolpassword from pg_authid where rolname = '{user}'", "postgres")


def with_pgusher(pooler: PoolerFactory, userlist: dict[str, str], pgusher: dict[str, str],
                 databases: dict[str, str] | None = None, **settings: Any) -> PoolerProc:
    main = {"pool_mode": "transaction", "server_login_retry": "1"}
    main.update({k: str(v) for k, v in settings.items()})
    return pooler({"databases": databases or pooler.databases(), "pgbouncer": main,
                   "pgusher": pgusher}, userlist)


# ---------------------------------------------------------------------------------- HBA


HBA = """\
# rule order matters: the first match decides
local   all   all                       trust
host    all   md5_user    127.0.0.1/32  reject
host    app   scram_user  127.0.0.1/32  scram-sha-256
host    all   scram_user  127.0.0.1/32  trust
host    all   plain_user  127.0.0.1/32  password
host    all   @users.txt  127.0.0.1/32  md5
"""

HBA_USERLIST = {"scram_user": "scram_pass", "md5_user": "md5_pass", "plain_user": "plain_pass",
                "postgres": "postgres", "trust_user": ""}


def test_hba_rule_order(pg: PgCluster, pooler: PoolerFactory, tmp_path: Any) -> None:
    # The pooler reads the file at start: write it first, then point the pooler at it.
    directory = str(tmp_path)
    with open(os.path.join(directory, "hba.conf"), "w") as f:
        f.write(HBA)
    with open(os.path.join(directory, "users.txt"), "w") as f:
        f.write("postgres\n")
    proc = start(pooler, auth_type="hba", userlist=HBA_USERLIST,
                 databases={"*": f"host=127.0.0.1 port={pg.port}"},
                 auth_hba_file=os.path.join(directory, "hba.conf"))
    # reject comes first for md5_user, even with the right password
    connect_fails(proc.dsn("md5_user", "md5_pass"),
                  'pg_hba.conf rejects connection for host "127.0.0.1", user "md5_user", '
                  'database "app", no encryption')
    # scram_user on app: scram-sha-256 is checked; the later trust rule never applies
    connect_fails(proc.dsn("scram_user", "wrong"),
                  'SASL authentication failed for user "scram_user"')
    assert current_user(proc.dsn("scram_user", "scram_pass")) == "scram_user"
    # ... but on another database the trust rule is the first match
    assert current_user(proc.dsn("scram_user", "anything", dbname="postgres")) == "scram_user"
    # password (cleartext) for plain_user, md5 through the @file for postgres
    assert current_user(proc.dsn("plain_user", "plain_pass")) == "plain_user"
    connect_fails(proc.dsn("plain_user", "nope"),
                  'password authentication failed for user "plain_user"')
    assert current_user(proc.dsn("postgres", "postgres")) == "postgres"
    # no rule for trust_user over TCP: rejected; over the unix socket: trust
    connect_fails(proc.dsn("trust_user", "x"),
                  'no pg_hba.conf entry for host "127.0.0.1", user "trust_user", '
                  'database "app", no encryption')
    assert current_user(proc.unix_dsn("trust_user")) == "trust_user"
    log = proc.log_text()
    assert "app/md5_user@127.0.0.1:" in log and "pg_hba.conf rejects connection" in log


def test_hba_errors_stop_start_and_reload(pg: PgCluster, pooler: PoolerFactory,
                                          tmp_path: Any) -> None:
    from support import PoolerError

    path = os.path.join(str(tmp_path), "hba.conf")
    with open(path, "w") as f:
        f.write("local all all trust\nhost all all 127.0.0.1/32 md5 bogus=1\n")
    with pytest.raises(PoolerError, match=f'{path}:2: unsupported authentication option '
                                          '"bogus"'):
        start(pooler, auth_type="hba", auth_hba_file=path)
    with open(path, "w") as f:
        f.write("host all all 127.0.0.1/32 trust\n")
    proc = start(pooler, auth_type="hba", auth_hba_file=path)
    assert current_user(proc.dsn("scram_user")) == "scram_user"
    with open(path, "w") as f:
        f.write("host all all 127.0.0.1/32 reject\nhost all all all oops\n")
    proc.reload()
    deadline = time.monotonic() + 10
    while "config reload failed" not in proc.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert f'{path}:2: invalid authentication method "oops"' in proc.log_text()
    assert current_user(proc.dsn("scram_user")) == "scram_user"  # the old rules stay
    with open(path, "w") as f:
        f.write("host all all 127.0.0.1/32 reject\n")
    proc.reload()
    deadline = time.monotonic() + 10
    while proc.log_text().count("got SIGHUP") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    connect_fails(proc.dsn("scram_user"), "pg_hba.conf rejects connection")


# ---------------------------------------------------------------------------------- auth_query


@pytest.fixture
def expired_user(pg: PgCluster) -> str:
    if not pg.sql("select 1 from pg_roles where rolname = 'expired_user'", "postgres"):
        pg.sql("CREATE ROLE expired_user LOGIN PASSWORD 'expired_pass' "
               "VALID UNTIL '2001-01-01';", "postgres")
        pg.grant_all(["expired_user"])
    return "expired_user"


@pytest.mark.parametrize("where", ["global", "database"])
def test_auth_query(pg: PgCluster, pooler: PoolerFactory, expired_user: str,
                    where: str) -> None:
    """Secrets come from pg_authid; auth_file only holds auth_user's own password."""
    db = f"host=127.0.0.1 port={pg.port} dbname=app"
    settings: dict[str, Any] = {"auth_type": "md5"}
    if where == "global":
        settings["auth_user"] = "postgres"
    else:
        db += " auth_user=postgres"
    proc = start(pooler, databases={"app": db}, userlist={"postgres": "postgres"}, **settings)
    # SCRAM secret on the server: SCRAM to the client, pass-through to the server
    assert current_user(proc.dsn("scram_user", "scram_pass")) == "scram_user"
    # md5 secret on the server: md5 to the client, the hash logs in to the server
    assert current_user(proc.dsn("md5_user", "md5_pass")) == "md5_user"
    for user, password in (("scram_user", "wrong"), ("md5_user", "wrong"),
                           (expired_user, "expired_pass"), ("nobody", "x"),
                           ("x' or '1'='1", "x")):
        # scram_user's secret is a SCRAM one: md5 turns to SCRAM, whose failure says so
        method = "SASL" if user == "scram_user" else "password"
        connect_fails(proc.dsn(user, password),
                      f'{method} authentication failed for user "{user}"')
    # A changed password applies at once: nothing is cached.
    pg.sql("ALTER ROLE md5_user VALID UNTIL '2001-01-01'", "postgres")
    try:
        connect_fails(proc.dsn("md5_user", "md5_pass"), "password authentication failed")
    finally:
        pg.sql("ALTER ROLE md5_user VALID UNTIL 'infinity'", "postgres")
    assert current_user(proc.dsn("md5_user", "md5_pass")) == "md5_user"
    # many logins share one lookup connection
    assert pg.connections(user="postgres", dbname="app") == 1


def test_auth_query_with_wrong_auth_user_password(pg: PgCluster,
                                                  pooler: PoolerFactory) -> None:
    proc = start(pooler, auth_type="scram-sha-256", auth_user="postgres",
                 userlist={"postgres": "not-the-password"})
    # The lookup connection's failed login reaches the client in the server's words.
    connect_fails(proc.dsn("scram_user", "scram_pass"),
                  'password authentication failed for user "postgres"')
    assert ("app/postgres@auth_query server login failed: FATAL password authentication "
            'failed for user "postgres"') in proc.log_text()


def test_auth_dbname(pg: PgCluster, pooler: PoolerFactory) -> None:
    dbs = {"app": f"host=127.0.0.1 port={pg.port} dbname=app",
           "authdb": f"host=127.0.0.1 port={pg.port} dbname=postgres"}
    proc = start(pooler, databases=dbs, auth_type="scram-sha-256", auth_user="postgres",
                 auth_dbname="authdb", userlist={"postgres": "postgres"})
    assert current_user(proc.dsn("scram_user", "scram_pass")) == "scram_user"
    assert pg.connections(user="postgres", dbname="postgres") == 1


# ---------------------------------------------------------------------------------- pass-through


def test_scram_pass_through_without_any_password(pg: PgCluster, pooler: PoolerFactory) -> None:
    secret = authid_secret(pg, "scram_user")
    assert secret.startswith("SCRAM-SHA-256$")
    proc = start(pooler, "session", pool_size=3, auth_type="scram-sha-256",
                 userlist={"scram_user": secret})
    assert "scram_pass" not in Path(proc.auth_file).read_text()
    assert "scram_pass" not in Path(proc.ini_path).read_text()
    conns = [psycopg.connect(proc.dsn("scram_user", "scram_pass")) for _ in range(3)]
    try:
        # three server connections, each logged in with the keys from a client's proof
        for conn in conns:
            assert conn.execute("select current_user").fetchone() == ("scram_user",)
        assert pg.connections(user="scram_user") == 3
    finally:
        for conn in conns:
            conn.close()
    connect_fails(proc.dsn("scram_user", "wrong"),
                  'SASL authentication failed for user "scram_user"')


def test_pass_through_from_cleartext_login(pg: PgCluster, pooler: PoolerFactory) -> None:
    proc = start(pooler, auth_type="plain",
                 userlist={"scram_user": authid_secret(pg, "scram_user")})
    assert current_user(proc.dsn("scram_user", "scram_pass")) == "scram_user"


def test_pass_through_needs_a_client_proof(pg: PgCluster, pooler: PoolerFactory) -> None:
    """trust gives no proof: the precise reason reaches the client and the log."""
    proc = start(pooler, auth_type="trust",
                 userlist={"scram_user": authid_secret(pg, "scram_user")})
    connect_fails(proc.dsn("scram_user"), 'cannot do SCRAM authentication as user '
                                          '"scram_user": wrong password type: only a SCRAM '
                                          'secret is stored')


def test_pass_through_with_a_stale_secret(pg: PgCluster, pooler: PoolerFactory) -> None:
    """A secret that no longer matches the server's: the server refuses the keys."""
    from pgusher.auth.scram import format_scram_secret, make_scram_secret

    stale = format_scram_secret(make_scram_secret("scram_pass"))  # another salt
    proc = start(pooler, auth_type="scram-sha-256", userlist={"scram_user": stale})
    connect_fails(proc.dsn("scram_user", "scram_pass"),
                  'password authentication failed for user "scram_user"')
    assert "server login failed" in proc.log_text()


# ---------------------------------------------------------------------------------- failures


def test_failed_logins_logged_and_delayed(pg: PgCluster, pooler: PoolerFactory) -> None:
    proc = with_pgusher(pooler, {"scram_user": "scram_pass"}, {"auth_fail_delay": "1"},
                        auth_type="scram-sha-256")
    began = time.monotonic()
    connect_fails(proc.dsn("scram_user", "wrong"),
                  'SASL authentication failed for user "scram_user"')
    assert time.monotonic() - began >= 0.9
    began = time.monotonic()
    assert current_user(proc.dsn("scram_user", "scram_pass")) == "scram_user"
    assert time.monotonic() - began < 0.9
    log = proc.log_text()
    assert "app/scram_user@127.0.0.1:" in log
    assert 'closing because: SASL authentication failed for user "scram_user"' in log


GUESSES = 1000
AT_ONCE = 100
ATTACKER = "127.0.0.2"  # another address of the loopback network: another source


async def guess_passwords(port: int) -> list[float]:
    """GUESSES wrong md5 answers from ATTACKER, AT_ONCE at a time; how long each error took
    to come after the password was sent."""
    limit = asyncio.Semaphore(AT_ONCE)
    waits: list[float] = []

    async def one() -> None:
        async with limit:
            reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                           local_addr=(ATTACKER, 0))
            try:
                writer.write(startup_packet("scram_user"))
                kind, length = struct.unpack("!ci", await reader.readexactly(5))
                await reader.readexactly(length - 4)
                assert kind == b"R"
                writer.write(message(b"p", b"md5" + b"0" * 32 + b"\0"))
                sent = time.monotonic()
                kind, length = struct.unpack("!ci", await reader.readexactly(5))
                body = await reader.readexactly(length - 4)
                waits.append(time.monotonic() - sent)
                assert kind == b"E" and b"password authentication failed" in body, body
            finally:
                writer.close()

    await asyncio.gather(*(one() for _ in range(GUESSES)))
    return waits


def test_guessing_from_one_address_is_slowed_others_are_not(pg: PgCluster,
                                                            pooler: PoolerFactory) -> None:
    proc = with_pgusher(pooler, {"scram_user": "scram_pass"}, {"auth_fail_delay_max": "1"},
                        auth_type="md5", max_client_conn="400")
    dsn = proc.dsn("scram_user", "scram_pass")
    assert current_user(dsn) == "scram_user"
    timings: list[float] = []
    done = threading.Event()

    def other_client() -> None:
        while not done.is_set():
            began = time.monotonic()
            with psycopg.connect(dsn) as conn:
                conn.execute("select 1").fetchone()
            timings.append(time.monotonic() - began)

    other = threading.Thread(target=other_client)
    other.start()
    began = time.monotonic()
    try:
        waits = asyncio.run(guess_passwords(proc.port))
    finally:
        done.set()
        other.join(30)
    attack = time.monotonic() - began
    timings.sort()
    p99 = timings[int(len(timings) * 0.99)]
    waits.sort()
    print(f"{GUESSES} wrong passwords, {AT_ONCE} at a time: {attack:.1f}s, median answer "
          f"after {waits[len(waits) // 2]:.3f}s; the other client: {len(timings)} logins "
          f"and queries, p50 {timings[len(timings) // 2] * 1000:.1f} ms, "
          f"p99 {p99 * 1000:.1f} ms")
    # From the sixth failure on, every answer waits the full second (auth_fail_delay_max).
    assert waits[len(waits) // 10] >= 0.95
    assert attack >= GUESSES / AT_ONCE * 0.95
    # The other client, from another address, is not held back: a generous bound.
    assert len(timings) > 20
    assert p99 < 0.5
    log = Path(proc.log_path).read_text()  # the logfile alone (stderr has the same lines)
    slowed = [line for line in log.splitlines() if f"recent failed logins from {ATTACKER}:"
              in line]
    assert len(slowed) == GUESSES - 1
    assert f"{GUESSES} recent failed logins from {ATTACKER}: answered after 1.00s" in log
    assert "recent failed logins from 127.0.0.1" not in log
