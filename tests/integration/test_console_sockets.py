"""SHOW CLIENTS and SHOW SERVERS as PgBouncer writes them: the tls column of both legs, times
as ``YYYY-MM-DD HH:MM:SS UTC`` text; and an unknown user named in the log, never to the
client."""

from __future__ import annotations

import datetime
import re
import tempfile
import time
from collections.abc import Iterator

import psycopg
import pytest
from consolecase import ADMIN, STATS, console, show
from poolcase import USERLIST, start

from support import PgCluster, PoolerFactory, find_bindir
from support.tls import Pki, make_pki, start_tls_cluster

STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$")
# What the login line logs and the column shows: version/cipher, e.g. TLSv1.3/TLS_AES_...
TLS_TEXT = re.compile(r"^TLSv1\.[23]/[A-Z0-9_-]+$")


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


def test_tls_columns_and_times(tls_pg: PgCluster, pooler: PoolerFactory, pki: Pki) -> None:
    proc = start(pooler, "session",
                 databases={"app": f"host=127.0.0.1 port={tls_pg.port} dbname=app"},
                 admin_users=ADMIN, stats_users=STATS,
                 server_tls_sslmode="require", server_tls_ca_file=pki.ca_cert,
                 client_tls_sslmode="allow", client_tls_cert_file=pki.server_cert,
                 client_tls_key_file=pki.server_key, client_tls_ca_file=pki.ca_cert)
    before = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    with psycopg.connect(proc.dsn("scram_user", sslmode="require"), autocommit=True) as tls_c, \
            psycopg.connect(proc.dsn("scram_user", sslmode="disable"), autocommit=True) as plain:
        tls_c.execute("select 1")
        plain.execute("select 1")
        time.sleep(0.2)
        with console(proc, sslmode="disable") as admin:
            clients = [r for r in show(admin, "CLIENTS") if r["user"] == "scram_user"]
            servers = show(admin, "SERVERS")
    assert sorted(bool(r["tls"]) for r in clients) == [False, True], clients
    tls_text = next(r["tls"] for r in clients if r["tls"])
    assert TLS_TEXT.match(tls_text), clients
    # Both servers were reached over TLS (server_tls_sslmode = require).
    assert len(servers) == 2 and all(TLS_TEXT.match(r["tls"]) for r in servers), servers
    logins = re.findall(r"login attempt: db=app user=scram_user tls=(\S+)", proc.log_text())
    assert set(logins) == {"no", tls_text}, logins
    after = datetime.datetime.now(datetime.UTC)
    for row in (*clients, *servers):
        for column in ("connect_time", "request_time"):
            text = row[column]
            assert STAMP.match(text), (column, text)
            when = datetime.datetime.strptime(text, "%Y-%m-%d %H:%M:%S UTC").replace(
                tzinfo=datetime.UTC)
            assert before - datetime.timedelta(seconds=1) <= when <= after, (column, text)


def test_unknown_user_is_named_in_the_log_only(pg: PgCluster, pooler: PoolerFactory) -> None:
    proc = start(pooler, auth_type="scram-sha-256")
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(proc.dsn("nobody_here", "guess"))
    # PgBouncer's words for a failed SCRAM login, the same for a known user.
    assert 'SASL authentication failed for user "nobody_here"' in str(err.value)
    assert "no such user" not in str(err.value)
    with pytest.raises(psycopg.OperationalError) as known:
        psycopg.connect(proc.dsn("scram_user", "wrong"))
    assert str(known.value).replace("scram_user", "nobody_here") == str(err.value)
    deadline = time.monotonic() + 5
    while "no such user: nobody_here" not in proc.log_text():
        assert time.monotonic() < deadline, proc.log_text()
        time.sleep(0.05)
    assert re.search(r" LOG C-0x[0-9a-f]+: app/nobody_here@127\.0\.0\.1:\d+ no such user: "
                     r"nobody_here$", proc.log_text(), re.M), proc.log_text()
    assert "no such user: scram_user" not in proc.log_text()
    assert USERLIST["scram_user"]  # the known user has a secret, so it is not "no such"
