"""TLS toward PostgreSQL (every server_tls_sslmode) and toward clients (every client mode)."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator

import psycopg
import pytest
from poolcase import USERLIST, start

from support import PgCluster, PoolerFactory, find_bindir, run_psql
from support.tls import Pki, make_pki, start_tls_cluster, use_server_certificate
from support.wire import RawConn, query


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki(tempfile.mkdtemp(prefix="pgusher-pki-"))


@pytest.fixture(scope="module")
def tls_pg(pki: Pki) -> Iterator[PgCluster]:
    cluster = start_tls_cluster(find_bindir(), pki)
    try:
        yield cluster
    finally:
        cluster.destroy()


def server_ssl(conn: psycopg.Connection[tuple[object, ...]]) -> bool:
    row = conn.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()").fetchone()
    return bool(row and row[0])


def db_for(cluster: PgCluster) -> dict[str, str]:
    return {"app": f"host=127.0.0.1 port={cluster.port} dbname=app"}


# ---------------------------------------------------------------------------------- server leg


@pytest.mark.parametrize("mode,works", [
    ("disable", True), ("allow", True), ("prefer", True),
    ("require", False), ("verify-ca", False), ("verify-full", False),
])
def test_server_modes_against_plain_server(pg: PgCluster, pooler: PoolerFactory, pki: Pki,
                                           mode: str, works: bool) -> None:
    proc = start(pooler, server_tls_sslmode=mode, server_tls_ca_file=pki.ca_cert)
    if works:
        with psycopg.connect(proc.dsn("scram_user")) as conn:
            assert not server_ssl(conn)
        return
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(proc.dsn("scram_user"))
    message = f"server does not support TLS, but server_tls_sslmode = {mode} requires it"
    assert message in str(err.value)
    assert message in proc.log_text()


@pytest.mark.parametrize("mode,tls", [
    ("disable", None), ("allow", None), ("prefer", True),
    ("require", True), ("verify-ca", True), ("verify-full", True),
])
def test_server_modes_against_tls_server(tls_pg: PgCluster, pooler: PoolerFactory, pki: Pki,
                                         mode: str, tls: bool | None) -> None:
    proc = start(pooler, databases=db_for(tls_pg), server_tls_sslmode=mode,
                 server_tls_ca_file=pki.ca_cert)
    if tls is None:
        # The server only accepts hostssl; disable and allow never ask for TLS.
        with pytest.raises(psycopg.OperationalError, match=r"no pg_hba.conf entry .* no "
                                                           r"encryption"):
            psycopg.connect(proc.dsn("scram_user"))
        return
    with psycopg.connect(proc.dsn("scram_user")) as conn:
        assert server_ssl(conn)
        assert conn.execute("select current_user").fetchone() == ("scram_user",)


def test_server_verify_with_unrelated_ca(tls_pg: PgCluster, pooler: PoolerFactory,
                                         pki: Pki) -> None:
    proc = start(pooler, databases=db_for(tls_pg), server_tls_sslmode="verify-ca",
                 server_tls_ca_file=pki.other_ca_cert)
    with pytest.raises(psycopg.OperationalError,
                       match=r"server certificate verification failed .*verify-ca"):
        psycopg.connect(proc.dsn("scram_user"))
    assert "server certificate verification failed" in proc.log_text()


def test_server_wrong_host_certificate(tls_pg: PgCluster, pooler: PoolerFactory,
                                       pki: Pki) -> None:
    use_server_certificate(tls_pg, pki.wrong_host_cert, pki.wrong_host_key)
    try:
        full = start(pooler, databases=db_for(tls_pg), server_tls_sslmode="verify-full",
                     server_tls_ca_file=pki.ca_cert)
        with pytest.raises(psycopg.OperationalError) as err:
            psycopg.connect(full.dsn("scram_user"))
        assert "server certificate verification failed (server_tls_sslmode = verify-full)" \
            in str(err.value)
        assert "127.0.0.1" in str(err.value)
        # verify-ca checks the chain only: the same certificate is accepted.
        ca_only = start(pooler, databases=db_for(tls_pg), server_tls_sslmode="verify-ca",
                        server_tls_ca_file=pki.ca_cert)
        with psycopg.connect(ca_only.dsn("scram_user")) as conn:
            assert server_ssl(conn)
    finally:
        use_server_certificate(tls_pg, pki.server_cert, pki.server_key)


def test_client_certificate_to_server(tls_pg: PgCluster, pooler: PoolerFactory,
                                      pki: Pki) -> None:
    cert, key = pki.clients["cert_user"]
    proc = start(pooler, databases=db_for(tls_pg), server_tls_sslmode="verify-full",
                 server_tls_ca_file=pki.ca_cert, server_tls_cert_file=cert,
                 server_tls_key_file=key, userlist={"cert_user": ""})
    with psycopg.connect(proc.dsn("cert_user")) as conn:
        assert conn.execute("select current_user").fetchone() == ("cert_user",)
        assert server_ssl(conn)


BIG_RESULTS = {
    "copy": "copy (select i, repeat('x', 100) from generate_series(1, 5000000) i) to stdout",
    "select": "select i, repeat('x', 100) from generate_series(1, 5000000) i",
}


@pytest.mark.parametrize("kind", list(BIG_RESULTS))
def test_client_gone_mid_result_frees_the_backend(tls_pg: PgCluster, pooler: PoolerFactory,
                                                  kind: str) -> None:
    """A client that leaves while a big result streams over server TLS: the server connection
    is cut at once, so the backend ends its transaction and its locks go within a second."""
    tls_pg.sql("create table if not exists held (i int)")
    proc = start(pooler, databases=db_for(tls_pg), server_tls_sslmode="require")
    victim = RawConn.tcp(proc.port)
    victim.login("postgres")
    for sql in ("begin", "lock table held"):
        victim.send(query(sql))
        assert not [r for r in victim.read_until_ready() if r[0] == "E"]
    victim.send(query(BIG_RESULTS[kind]))
    got = 0
    while got < 2_000_000:  # the result is streaming
        chunk = victim.sock.recv(65536)
        assert chunk
        got += len(chunk)
    holder = tls_pg.sql("select s.ssl from pg_locks l join pg_stat_ssl s using (pid) "
                        "where l.relation = 'held'::regclass and l.mode = 'AccessExclusiveLock'")
    assert holder == "t"  # the lock is held on a TLS connection
    with psycopg.connect(tls_pg.dsn("postgres", sslmode="require"), autocommit=True) as other:
        other.execute("set lock_timeout = '1s'")
        # The kernel closes a killed client's socket just so (with unread data: a reset).
        victim.close()
        left = time.monotonic()
        with other.transaction():
            other.execute("lock table held")
        freed = time.monotonic() - left
    print(f"{kind}: lock free {freed:.3f} s after the client left")
    assert "client disconnect while server was not ready" in proc.log_text()


# ---------------------------------------------------------------------------------- client leg


def client_tls(pki: Pki, mode: str, **extra: str) -> dict[str, str]:
    settings = {"client_tls_sslmode": mode, "client_tls_cert_file": pki.server_cert,
                "client_tls_key_file": pki.server_key, "client_tls_ca_file": pki.ca_cert}
    settings.update(extra)
    return settings


def ssl_in_use(conn: psycopg.Connection[tuple[object, ...]]) -> bool:
    return bool(conn.pgconn.ssl_in_use)


# client sslmode -> expected outcome per pooler mode: "tls", "plain" or an error fragment
CLIENT_MATRIX = {
    "disable": {"disable": "plain", "require": "server does not support SSL",
                "verify-full": "server does not support SSL"},
    "allow": {"disable": "plain", "require": "tls", "verify-full": "tls"},
    "prefer": {"disable": "plain", "require": "tls", "verify-full": "tls"},
    "require": {"disable": "SSL required", "require": "tls", "verify-full": "tls"},
    "verify-ca": {"disable": "SSL required", "require": "certificate",
                  "verify-full": "certificate"},
    "verify-full": {"disable": "SSL required", "require": "certificate",
                    "verify-full": "certificate"},
}


@pytest.mark.parametrize("mode", list(CLIENT_MATRIX))
def test_client_modes(pg: PgCluster, pooler: PoolerFactory, pki: Pki, mode: str) -> None:
    proc = start(pooler, **client_tls(pki, mode))
    for sslmode, expected in CLIENT_MATRIX[mode].items():
        dsn = proc.dsn("scram_user", sslmode=sslmode, sslrootcert=pki.ca_cert)
        if expected in ("tls", "plain"):
            with psycopg.connect(dsn) as conn:
                assert ssl_in_use(conn) == (expected == "tls"), (mode, sslmode)
                assert conn.execute("select 1").fetchone() == (1,)
            continue
        with pytest.raises(psycopg.OperationalError) as err:
            psycopg.connect(dsn)
        assert expected in str(err.value), (mode, sslmode, str(err.value))
    if mode in ("verify-ca", "verify-full"):
        cert, key = pki.clients["scram_user"]
        with psycopg.connect(proc.dsn("scram_user", sslmode="verify-full",
                                      sslrootcert=pki.ca_cert, sslcert=cert,
                                      sslkey=key)) as conn:
            assert ssl_in_use(conn)
    if mode != "disable":
        assert "login attempt: db=app user=scram_user tls=TLSv1.3/" in proc.log_text()
    assert "login attempt: db=app user=scram_user tls=no" in proc.log_text() or \
        mode not in ("disable", "allow", "prefer")


def test_require_leaves_unix_socket_alone(pg: PgCluster, pooler: PoolerFactory,
                                          pki: Pki) -> None:
    proc = start(pooler, **client_tls(pki, "require"))
    with psycopg.connect(proc.unix_dsn("scram_user")) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_psql_verify_full_with_client_certificate(pg: PgCluster, pooler: PoolerFactory,
                                                  pki: Pki) -> None:
    proc = start(pooler, **client_tls(pki, "verify-full"))
    cert, key = pki.clients["md5_user"]
    ok = run_psql(proc.dsn("md5_user", sslmode="verify-full", sslrootcert=pki.ca_cert,
                           sslcert=cert, sslkey=key), "select current_user")
    assert (ok.returncode, ok.stdout.strip()) == (0, "md5_user"), ok.stderr
    plain = run_psql(proc.dsn("md5_user", sslmode="disable"), "select 1")
    assert plain.returncode != 0 and "SSL required" in plain.stderr


def test_direct_tls(pg: PgCluster, pooler: PoolerFactory, pki: Pki) -> None:
    if psycopg.pq.version() < 170000:
        pytest.skip("libpq older than 17 has no sslnegotiation=direct")
    proc = start(pooler, **client_tls(pki, "require"))
    with psycopg.connect(proc.dsn("scram_user", sslmode="verify-full", sslrootcert=pki.ca_cert,
                                  sslnegotiation="direct")) as conn:
        assert ssl_in_use(conn)
        assert conn.execute("select current_user").fetchone() == ("scram_user",)


def test_auth_type_cert(pg: PgCluster, pooler: PoolerFactory, pki: Pki) -> None:
    proc = start(pooler, auth_type="cert", **client_tls(pki, "require"))
    cert, key = pki.clients["scram_user"]
    tls = {"sslmode": "verify-full", "sslrootcert": pki.ca_cert}
    with psycopg.connect(proc.dsn("scram_user", sslcert=cert, sslkey=key, **tls)) as conn:
        assert conn.execute("select current_user").fetchone() == ("scram_user",)
    with pytest.raises(psycopg.OperationalError,
                       match='certificate authentication failed for user "md5_user"'):
        psycopg.connect(proc.dsn("md5_user", sslcert=cert, sslkey=key, **tls))
    with pytest.raises(psycopg.OperationalError, match="requires a valid client certificate"):
        psycopg.connect(proc.dsn("scram_user", **tls))


def test_tls_settings_change_on_reload(pg: PgCluster, pooler: PoolerFactory, pki: Pki) -> None:
    proc = start(pooler)
    with psycopg.connect(proc.dsn("scram_user", sslmode="prefer")) as conn:
        assert not ssl_in_use(conn)
    main = {"pool_mode": "transaction", "auth_type": "trust", "server_login_retry": "1",
            **client_tls(pki, "require")}
    proc.write_ini({"databases": pooler.databases(), "pgbouncer": main})
    proc.write_userlist(USERLIST)
    proc.reload()
    deadline = time.monotonic() + 10
    while "got SIGHUP" not in proc.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    with psycopg.connect(proc.dsn("scram_user", sslmode="prefer")) as conn:
        assert ssl_in_use(conn)
    with pytest.raises(psycopg.OperationalError, match="SSL required"):
        psycopg.connect(proc.dsn("scram_user", sslmode="disable"))
