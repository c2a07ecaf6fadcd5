"""TLS settings changed while running: the console's SET and RELOAD rebuild the contexts, a
server TLS change retires the server connections made under the old one, and the TLS 1.3
cipher suites are chosen as configured."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator

import psycopg
import pytest
from consolecase import console, start_console
from poolcase import USERLIST

from support import PgCluster, PoolerFactory, PoolerProc, find_bindir
from support.tls import Pki, make_pki, start_tls_cluster


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


def wait_for_log(proc: PoolerProc, text: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in proc.log_text():
        assert time.monotonic() < deadline, f"{text!r} not logged"
        time.sleep(0.05)


def set_values(proc: PoolerProc, values: dict[str, str]) -> list[str]:
    """SET each key on the console; the notices it answered with."""
    notices: list[str] = []
    with console(proc) as admin:
        admin.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
        for key, value in values.items():
            admin.execute(f"SET {key} = '{value}'")
    return notices


def ssl_in_use(conn: psycopg.Connection[tuple[object, ...]]) -> bool:
    return bool(conn.pgconn.ssl_in_use)


def test_set_client_tls_takes_effect_at_once(pg: PgCluster, pooler: PoolerFactory,
                                             pki: Pki) -> None:
    proc = start_console(pooler)
    with psycopg.connect(proc.dsn("scram_user", sslmode="prefer")) as conn:
        assert not ssl_in_use(conn)
    notices = set_values(proc, {"client_tls_key_file": pki.server_key,
                                "client_tls_cert_file": pki.server_cert,
                                "client_tls_ca_file": pki.ca_cert,
                                "client_tls_sslmode": "require"})
    assert notices == []
    with psycopg.connect(proc.dsn("scram_user", sslmode="verify-full",
                                  sslrootcert=pki.ca_cert)) as conn:
        assert ssl_in_use(conn)
    with pytest.raises(psycopg.OperationalError, match="SSL required"):
        psycopg.connect(proc.dsn("scram_user", sslmode="disable"))
    set_values(proc, {"client_tls_sslmode": "disable"})
    with psycopg.connect(proc.dsn("scram_user", sslmode="prefer")) as conn:
        assert not ssl_in_use(conn)


def test_set_that_cannot_build_keeps_the_old_contexts(pg: PgCluster, pooler: PoolerFactory,
                                                      pki: Pki) -> None:
    proc = start_console(pooler, client_tls_key_file=pki.server_key,
                         client_tls_cert_file=pki.server_cert, client_tls_sslmode="require")
    notices = set_values(proc, {"client_tls_cert_file": "/nonexistent/server.crt"})
    assert notices == ["TLS settings could not be applied, still using old configuration"]
    assert "TLS setup failed: client_tls_cert_file" in proc.log_text()
    # The old certificate is still offered.
    with psycopg.connect(proc.dsn("scram_user", sslmode="verify-full",
                                  sslrootcert=pki.ca_cert)) as conn:
        assert ssl_in_use(conn)
    with console(proc) as admin:
        value = [r for r in admin.execute("SHOW CONFIG").fetchall()
                 if r[0] == "client_tls_cert_file"]
    assert value and value[0][1] == "/nonexistent/server.crt"


def test_reload_with_missing_certificate_fails(pg: PgCluster, pooler: PoolerFactory,
                                               pki: Pki) -> None:
    proc = start_console(pooler)
    main = {"auth_type": "trust", "admin_users": "postgres", "client_tls_sslmode": "require",
            "client_tls_key_file": pki.server_key,
            "client_tls_cert_file": "/nonexistent/server.crt"}
    proc.write_ini({"databases": pooler.databases(), "pgbouncer": main})
    proc.write_userlist(USERLIST)
    with console(proc) as admin, pytest.raises(psycopg.Error, match="RELOAD failed"):
        admin.execute("RELOAD")
    assert "ERROR TLS setup failed:" in proc.log_text()
    assert "No such file or directory" in proc.log_text()


@pytest.mark.parametrize("suite", ["TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_256_GCM_SHA384"])
def test_tls13_cipher_suites(pg: PgCluster, pooler: PoolerFactory, pki: Pki,
                             suite: str) -> None:
    proc = start_console(pooler, client_tls_key_file=pki.server_key,
                         client_tls_cert_file=pki.server_cert, client_tls_sslmode="require",
                         client_tls_protocols="tlsv1.3", client_tls13_ciphers=suite)
    with psycopg.connect(proc.dsn("scram_user", sslmode="require")) as conn:
        assert ssl_in_use(conn)
    assert f"tls=TLSv1.3/{suite}" in proc.log_text()
    other = ("TLS_AES_256_GCM_SHA384" if suite.startswith("TLS_CHACHA")
             else "TLS_CHACHA20_POLY1305_SHA256")
    assert set_values(proc, {"client_tls13_ciphers": other}) == []
    with psycopg.connect(proc.dsn("scram_user", sslmode="require")) as conn:
        assert ssl_in_use(conn)
    assert f"tls=TLSv1.3/{other}" in proc.log_text()
    notices = set_values(proc, {"client_tls13_ciphers": "unknown"})
    assert notices == ["TLS settings could not be applied, still using old configuration"]
    assert "failed to set the TLSv1.3 cipher suites" in proc.log_text()


def test_server_tls_change_retires_servers(tls_pg: PgCluster, pooler: PoolerFactory,
                                           pki: Pki) -> None:
    databases = {"app": f"host=127.0.0.1 port={tls_pg.port} dbname=app"}
    proc = start_console(pooler, databases=databases, server_tls_sslmode="require",
                         server_tls_protocols="tlsv1.2")
    with psycopg.connect(proc.dsn("scram_user"), autocommit=True) as conn:
        assert conn.execute("select version from pg_stat_ssl "
                            "where pid = pg_backend_pid()").fetchone() == ("TLSv1.2",)
        # An unchanged setting retires nothing.
        set_values(proc, {"server_tls_protocols": "tlsv1.2"})
        with console(proc) as admin:
            admin.execute("RELOAD")
        time.sleep(0.3)
        assert "obsolete connection" not in proc.log_text()
        set_values(proc, {"server_tls_protocols": "secure"})
        wait_for_log(proc, "obsolete connection")
        # The client goes on, on a server connected with the new settings.
        assert conn.execute("select version from pg_stat_ssl "
                            "where pid = pg_backend_pid()").fetchone() == ("TLSv1.3",)


def test_server_tls_change_forgets_a_failed_login(tls_pg: PgCluster, pooler: PoolerFactory,
                                                  pki: Pki) -> None:
    """A login refused under the old server TLS settings is not held against the new ones:
    the next client does not wait out server_login_retry."""
    databases = {"app": f"host=127.0.0.1 port={tls_pg.port} dbname=app"}
    proc = start_console(pooler, databases=databases, server_tls_sslmode="disable",
                         server_login_retry="60")
    with pytest.raises(psycopg.OperationalError, match=r"no pg_hba\.conf entry"):
        psycopg.connect(proc.dsn("scram_user"))
    set_values(proc, {"server_tls_sslmode": "require"})
    with psycopg.connect(proc.dsn("scram_user")) as conn:
        assert conn.execute("select ssl from pg_stat_ssl "
                            "where pid = pg_backend_pid()").fetchone() == (True,)


def test_server_mode_stays_with_the_contexts_in_force(pg: PgCluster, pooler: PoolerFactory,
                                                      pki: Pki) -> None:
    """A server_tls_sslmode SET whose contexts cannot be built changes nothing in force:
    servers are still reached as before."""
    proc = start_console(pooler, server_tls_sslmode="disable",
                         server_tls_cert_file="/nonexistent/client.crt")
    notices = set_values(proc, {"server_tls_sslmode": "require"})
    assert notices == ["TLS settings could not be applied, still using old configuration"]
    with psycopg.connect(proc.dsn("scram_user"), autocommit=True) as conn:
        assert conn.execute("select ssl from pg_stat_ssl "
                            "where pid = pg_backend_pid()").fetchone() == (False,)
    assert "obsolete connection" not in proc.log_text()
