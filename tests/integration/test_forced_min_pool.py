"""Pools without clients: a database with a forced user and min_pool_size is filled as soon
as it is loaded (start or reload), and pool_idle_timeout drops pools left empty."""
from __future__ import annotations

import time

import psycopg
from poolcase import USERLIST

from support import PgCluster, PoolerFactory


def wait_for(pg: PgCluster, user: str, dbname: str, count: int, timeout: float = 6) -> None:
    deadline = time.monotonic() + timeout
    while pg.connections(user=user, dbname=dbname) < count:
        assert time.monotonic() < deadline, f"{user}@{dbname} never reached {count}"
        time.sleep(0.2)


def test_forced_user_pool_filled_at_load_and_reload(pg: PgCluster,
                                                    pooler: PoolerFactory) -> None:
    forced = f"host=127.0.0.1 port={pg.port} dbname=app user=md5_user min_pool_size=2"
    main = {"pool_mode": "transaction", "auth_type": "trust", "default_pool_size": "3"}
    sections = {"databases": {"warm": forced}, "pgbouncer": main}
    proc = pooler(sections, USERLIST)
    wait_for(pg, "md5_user", "app", 2)
    time.sleep(1.5)
    assert pg.connections(user="md5_user", dbname="app") == 2  # min_pool_size, no more
    sections["databases"]["warm2"] = forced.replace("dbname=app", "dbname=postgres")
    proc.write_ini(sections)
    proc.reload()
    wait_for(pg, "md5_user", "postgres", 2)
    assert "S-0x" in proc.log_text() and "warm2/md5_user" in proc.log_text()


def test_pool_idle_timeout_drops_empty_pools(pg: PgCluster, pooler: PoolerFactory) -> None:
    """An empty pool goes after pool_idle_timeout; one kept warm by min_pool_size stays."""
    forced = f"host=127.0.0.1 port={pg.port} dbname=app user=md5_user min_pool_size=1"
    plain = f"host=127.0.0.1 port={pg.port} dbname=app"
    main = {"pool_mode": "transaction", "auth_type": "trust", "pool_idle_timeout": "1",
            "server_idle_timeout": "1", "admin_users": "postgres"}
    proc = pooler({"databases": {"app": plain, "warm": forced}, "pgbouncer": main}, USERLIST)
    wait_for(pg, "md5_user", "app", 1)
    with psycopg.connect(proc.dsn("scram_user"), autocommit=True) as conn:
        conn.execute("select 1")
    deadline = time.monotonic() + 8
    while "app/scram_user cleaning up idle pool" not in proc.log_text():
        assert time.monotonic() < deadline
        time.sleep(0.2)
    with psycopg.connect(proc.dsn("postgres", dbname="pgbouncer"), autocommit=True) as admin:
        pools = {(r[0], r[1]) for r in admin.execute("show pools").fetchall()}
    assert ("app", "scram_user") not in pools
    assert ("warm", "md5_user") in pools
    assert "warm/md5_user cleaning up idle pool" not in proc.log_text()
    with psycopg.connect(proc.dsn("scram_user"), autocommit=True) as conn:
        assert conn.execute("select 1").fetchone() == (1,)  # a new pool, made on demand
