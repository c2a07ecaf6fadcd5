"""HBA ``map=`` with auth_ident_file: a certificate's name or a socket peer's login name may
log in as the database users its map lists."""

from __future__ import annotations

import getpass
import os
import tempfile
import time
from typing import Any

import psycopg
import pytest
from poolcase import start

from support import PgCluster, PoolerFactory, PoolerProc
from support.tls import Pki, make_pki


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki(tempfile.mkdtemp(prefix="pgusher-pki-"))


def write(directory: Any, name: str, text: str) -> str:
    path = os.path.join(str(directory), name)
    with open(path, "w") as handle:
        handle.write(text)
    return path


def wait_log(proc: PoolerProc, text: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in proc.log_text():
        assert time.monotonic() < deadline, f"{text!r} not logged"
        time.sleep(0.05)


def current_user(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("select current_user").fetchone()
    assert row is not None
    return str(row[0])


def test_peer_map(pg: PgCluster, pooler: PoolerFactory, tmp_path: Any) -> None:
    me = getpass.getuser()
    hba = write(tmp_path, "hba.conf", "local all all peer map=mymap\n")
    ident = write(tmp_path, "ident.conf", f"mymap {me} postgres\nmymap  {me}  md5_user\n")
    proc = start(pooler, auth_type="hba", auth_hba_file=hba, auth_ident_file=ident)
    assert current_user(proc.unix_dsn("postgres")) == "postgres"
    assert current_user(proc.unix_dsn("md5_user")) == "md5_user"
    with pytest.raises(psycopg.OperationalError,
                       match='Peer authentication failed for user "scram_user"'):
        psycopg.connect(proc.unix_dsn("scram_user"))
    assert "ident map mymap cannot be matched" in proc.log_text()
    # "all" lets the system user in as anyone
    write(tmp_path, "ident.conf", f"mymap {me} all\n")
    proc.reload()
    wait_log(proc, "got SIGHUP")
    assert current_user(proc.unix_dsn("scram_user")) == "scram_user"


def test_cert_map(pg: PgCluster, pooler: PoolerFactory, pki: Pki, tmp_path: Any) -> None:
    hba = write(tmp_path, "hba.conf",
                "hostssl all all 0.0.0.0/0 cert map=certs\n")
    ident = write(tmp_path, "ident.conf", 'certs scram_user md5_user\ncerts "md5_user" all\n')
    proc = start(pooler, auth_type="hba", auth_hba_file=hba, auth_ident_file=ident,
                 client_tls_sslmode="require", client_tls_cert_file=pki.server_cert,
                 client_tls_key_file=pki.server_key, client_tls_ca_file=pki.ca_cert)
    tls = {"sslmode": "verify-full", "sslrootcert": pki.ca_cert}
    cert, key = pki.clients["scram_user"]
    as_scram = {"sslcert": cert, "sslkey": key, **tls}
    assert current_user(proc.dsn("md5_user", **as_scram)) == "md5_user"
    # the map does not list scram_user's own name: without it, no way in
    with pytest.raises(psycopg.OperationalError, match="certificate authentication failed"):
        psycopg.connect(proc.dsn("scram_user", **as_scram))
    assert "ident map: certs does not have a match" in proc.log_text()
    cert, key = pki.clients["md5_user"]
    assert current_user(proc.dsn("scram_user", sslcert=cert, sslkey=key, **tls)) == \
        "scram_user"


def test_missing_map_is_a_config_error(pg: PgCluster, pooler: PoolerFactory,
                                       tmp_path: Any) -> None:
    hba = write(tmp_path, "hba.conf", "local all all peer map=nosuch\n")
    ident = write(tmp_path, "ident.conf", "other root postgres\n")
    proc = start(pooler, auth_type="trust")
    main = {"auth_type": "hba", "auth_hba_file": hba, "auth_ident_file": ident}
    proc.write_ini({"databases": pooler.databases(), "pgbouncer": main})
    proc.reload()
    wait_log(proc, "config reload failed")
    assert f"{hba}:1: ident map nosuch is not found in {ident}" in proc.log_text()
