"""/metrics beyond the traffic counters: failures, refusals, process figures, every database.

Each failure is caused for real (a wrong password, an unknown user, a server port nobody
listens on, a database PostgreSQL does not have, a client left waiting past
query_wait_timeout, one client too many) and the counter is read back from a scrape, which
promtool must accept as it is.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from consolecase import http_get
from poolcase import USERLIST
from prometheus_client.parser import text_string_to_metric_families

from support import PgCluster, PoolerFactory, PoolerProc, free_port

# scripts/setup puts promtool in the virtualenv (or the system has its own).
PROMTOOL = (shutil.which("promtool")
            or shutil.which("promtool", path=str(Path(sys.executable).parent)))

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def scrape(base: str) -> tuple[str, Samples]:
    status, _ctype, text = http_get(base + "/metrics")
    assert status == 200
    return text, samples(text)


def promtool_check(text: str) -> None:
    """promtool's own verdict on a scrape: exit 0 and no lint remarks."""
    assert PROMTOOL is not None, "promtool is missing (scripts/setup installs prometheus)"
    done = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), (
        done.stdout + done.stderr)


def start(pooler: PoolerFactory, pg: PgCluster, **settings: Any) -> tuple[PoolerProc, str]:
    port = free_port()
    dead = free_port()  # nobody listens there
    server = f"host={pg.host} port={pg.port}"
    main = {"pool_mode": "transaction", "auth_type": "md5", "admin_users": "postgres",
            "default_pool_size": "1", "server_login_retry": "1"}
    main.update({k: str(v) for k, v in settings.items()})
    proc = pooler({"databases": {"app": f"{server} dbname=app",
                                 "idle": f"{server} dbname=app pool_size=7",
                                 "spare": f"{server} dbname=app reserve_pool_size=3",
                                 "nowhere": f"host=127.0.0.1 port={dead} dbname=app",
                                 "nodb": f"{server} dbname=no_such_database"},
                   "pgbouncer": main,
                   "pgusher": {"http_port": str(port), "http_addr": "127.0.0.1"}}, USERLIST)
    return proc, f"http://127.0.0.1:{port}"


def refused(dsn: str) -> str:
    with pytest.raises(psycopg.OperationalError) as caught:
        psycopg.connect(dsn, connect_timeout=10).close()
    return str(caught.value)


def test_failures_are_counted_by_kind(pg: PgCluster, pooler: PoolerFactory) -> None:
    proc, base = start(pooler, pg, query_wait_timeout=1, max_client_conn=2)
    text, got = scrape(base)
    promtool_check(text)
    # Before any failure the fixed label sets are there at zero.
    for reason in ("password", "no_such_user", "hba"):
        assert got[("pgusher_client_auth_failures_total", (("reason", reason),))] == 0
    assert got[("pgusher_client_refusals_total", (("limit", "max_client_conn"),))] == 0

    assert "password authentication failed" in refused(proc.dsn("postgres", password="wrong"))
    assert "password authentication failed" in refused(proc.dsn("ghost", password="x"))
    assert "password authentication failed" in refused(proc.dsn("ghost", password="y"))
    refused(proc.dsn("postgres", password="postgres", dbname="nowhere"))
    refused(proc.dsn("postgres", password="postgres", dbname="nodb"))

    password = {"password": "postgres"}
    holder = psycopg.connect(proc.dsn("postgres", **password), autocommit=True)
    waiter = psycopg.connect(proc.dsn("postgres", **password), autocommit=True)
    try:
        holder.execute("begin")
        holder.execute("select 1")  # keeps the only server of the pool
        assert "max_client_conn" in refused(proc.dsn("postgres", **password))
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError, match="query_wait_timeout"):
            waiter.execute("select 1")
        assert time.monotonic() - started < 5
    finally:
        holder.close()
        waiter.close()

    text, got = scrape(base)
    promtool_check(text)
    auth = {r: got[("pgusher_client_auth_failures_total", (("reason", r),))]
            for r in ("password", "no_such_user", "hba", "certificate", "peer", "other")}
    assert auth == {"password": 1, "no_such_user": 2, "hba": 0, "certificate": 0, "peer": 0,
                    "other": 0}
    assert got[("pgusher_server_connect_failures_total", (("database", "nowhere"),))] >= 1
    assert ("pgusher_server_connect_failures_total", (("database", "app"),)) not in got
    assert got[("pgusher_server_login_failures_total", (("database", "nodb"),))] >= 1
    assert ("pgusher_server_login_failures_total", (("database", "nowhere"),)) not in got
    assert got[("pgusher_query_wait_timeouts_total", (("database", "app"),))] == 1
    assert got[("pgusher_client_refusals_total", (("limit", "max_client_conn"),))] == 1
    assert got[("pgusher_client_refusals_total",
                (("limit", "max_db_client_connections"),))] == 0


def test_every_configured_database_and_its_state(pg: PgCluster, pooler: PoolerFactory
                                                 ) -> None:
    proc, base = start(pooler, pg)
    text, got = scrape(base)
    promtool_check(text)
    # No client has come yet: every configured database has its series all the same.
    for db in ("app", "idle", "nowhere", "nodb"):
        assert got[("pgusher_database_paused", (("database", db),))] == 0
        assert got[("pgusher_database_disabled", (("database", db),))] == 0
        assert got[("pgusher_database_clients", (("database", db),))] == 0
        assert got[("pgusher_database_server_connections", (("database", db),))] == 0
    assert got[("pgusher_database_pool_size", (("database", "idle"),))] == 7
    assert got[("pgusher_database_pool_size", (("database", "app"),))] == 1
    assert got[("pgusher_database_reserve_pool_size", (("database", "idle"),))] == 0
    assert got[("pgusher_database_reserve_pool_size", (("database", "spare"),))] == 3
    assert got[("pgusher_config_max_client_connections", ())] == 100
    assert got[("pgusher_config_max_user_connections", ())] == 0
    with psycopg.connect(proc.dsn("postgres", password="postgres", dbname="pgbouncer"),
                         autocommit=True) as admin:
        admin.execute("PAUSE idle")
        admin.execute("DISABLE nodb")
        with psycopg.connect(proc.dsn("postgres", password="postgres"),
                             autocommit=True) as client:
            client.execute("select 1")
            _text, got = scrape(base)
            assert got[("pgusher_database_clients", (("database", "app"),))] == 1
            assert got[("pgusher_database_server_connections", (("database", "app"),))] == 1
        _text, got = scrape(base)
        assert got[("pgusher_database_paused", (("database", "idle"),))] == 1
        assert got[("pgusher_database_paused", (("database", "app"),))] == 0
        assert got[("pgusher_database_disabled", (("database", "nodb"),))] == 1
        assert got[("pgusher_database_disabled", (("database", "idle"),))] == 0
        admin.execute("PAUSE")
        _text, got = scrape(base)
        assert all(got[("pgusher_database_paused", (("database", db),))] == 1
                   for db in ("app", "idle", "nowhere", "nodb"))
        assert got[("pgusher_paused", ())] == 1
        admin.execute("RESUME")
        admin.execute("ENABLE nodb")
        _text, got = scrape(base)
        assert got[("pgusher_database_paused", (("database", "idle"),))] == 0
        assert got[("pgusher_database_disabled", (("database", "nodb"),))] == 0


def test_process_figures(pg: PgCluster, pooler: PoolerFactory) -> None:
    proc, base = start(pooler, pg)
    pid = proc.pid
    assert pid is not None
    with psycopg.connect(proc.dsn("postgres", password="postgres"), autocommit=True) as c:
        for _ in range(200):
            c.execute("select 1")
        text, got = scrape(base)
        open_fds = len(os.listdir(f"/proc/{pid}/fd"))
    promtool_check(text)
    assert got[("process_cpu_seconds_total", ())] > 0
    rss = got[("process_resident_memory_bytes", ())]
    with open(f"/proc/{pid}/status") as f:
        vm_rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    assert rss > 10 * 2**20 and abs(rss - vm_rss) < 0.5 * vm_rss
    assert got[("process_virtual_memory_bytes", ())] >= rss
    # The scrape's own connection is counted in one and maybe gone from the other.
    assert abs(got[("process_open_fds", ())] - open_fds) <= 2 and open_fds > 5
    assert got[("process_max_fds", ())] >= 1024
    started = got[("process_start_time_seconds", ())]
    assert time.time() - 120 < started <= time.time()


def test_hba_refusals_have_their_own_reason(pg: PgCluster, pooler: PoolerFactory,
                                            tmp_path: Path) -> None:
    hba = tmp_path / "hba.conf"
    hba.write_text("host all md5_user 127.0.0.1/32 reject\n"
                   "host all postgres 127.0.0.1/32 md5\n")
    proc, base = start(pooler, pg, auth_type="hba", auth_hba_file=str(hba))
    assert "pg_hba.conf rejects" in refused(proc.dsn("md5_user", password="md5_pass"))
    assert "no pg_hba.conf entry" in refused(proc.dsn("plain_user", password="plain_pass"))
    assert "no pg_hba.conf entry" in refused(proc.dsn("ghost", password="x"))
    assert "password authentication failed" in refused(proc.dsn("postgres", password="no"))
    with psycopg.connect(proc.dsn("postgres", password="postgres")) as conn:
        conn.execute("select 1")
    text, got = scrape(base)
    promtool_check(text)
    auth = {r: got[("pgusher_client_auth_failures_total", (("reason", r),))]
            for r in ("password", "no_such_user", "hba", "certificate", "peer", "other")}
    assert auth == {"password": 1, "no_such_user": 0, "hba": 3, "certificate": 0, "peer": 0,
                    "other": 0}


def test_refusals_are_counted_by_limit(pg: PgCluster, pooler: PoolerFactory) -> None:
    proc, base = start(pooler, pg, max_db_client_connections=1, max_user_client_connections=2)
    password = {"password": "postgres"}
    first = psycopg.connect(proc.dsn("postgres", **password))
    second = psycopg.connect(proc.dsn("postgres", dbname="idle", **password))
    try:
        assert "max_db_client_connections" in refused(proc.dsn("postgres", **password))
        assert "max_user_client_connections" in refused(
            proc.dsn("postgres", dbname="spare", **password))
        assert "max_user_client_connections" in refused(
            proc.dsn("postgres", dbname="nodb", **password))
    finally:
        first.close()
        second.close()
    text, got = scrape(base)
    promtool_check(text)
    refusals = {k: got[("pgusher_client_refusals_total", (("limit", k),))]
                for k in ("max_client_conn", "max_db_client_connections",
                          "max_user_client_connections")}
    assert refusals == {"max_client_conn": 0, "max_db_client_connections": 1,
                        "max_user_client_connections": 2}
