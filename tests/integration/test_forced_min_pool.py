"""A database with a forced user and min_pool_size is filled as soon as it is loaded, at
start and after a reload, without waiting for a client (as PgBouncer does)."""

from __future__ import annotations

import time

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
