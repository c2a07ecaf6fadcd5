"""max_app_connections: the clients of one application hold at most that many of a pool's
servers at once, so a flood from one application leaves servers for the others; counted on
the server side (pg_stat_activity), not from the pooler's own figures."""

from __future__ import annotations

import threading
import time

import psycopg
from poolcase import USERLIST

from support import PgCluster, PoolerFactory


def test_one_application_holds_at_most_its_limit(pg: PgCluster, pooler: PoolerFactory) -> None:
    proc = pooler({"databases": pooler.databases(),
                   "pgbouncer": {"pool_mode": "transaction", "auth_type": "trust",
                                 "default_pool_size": "4"},
                   "pgusher": {"max_app_connections": "2"}}, USERLIST)
    greedy = [psycopg.connect(proc.dsn("postgres", dbname="app", application_name="greedy"),
                              autocommit=True) for _ in range(6)]
    small = psycopg.connect(proc.dsn("postgres", dbname="app", application_name="small"),
                            autocommit=True)
    errors: list[BaseException] = []

    def run(conn: psycopg.Connection) -> None:
        try:
            conn.execute("select pg_sleep(3), 'greedy'")
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in greedy]
    try:
        for t in threads:
            t.start()
        sleeping = ("select string_agg(pid::text, ',' order by pid) from pg_stat_activity "
                    "where query = 'select pg_sleep(3), ''greedy''' and state = 'active'")
        deadline = time.monotonic() + 10
        while "," not in (first := pg.sql(sleeping, "postgres")):
            assert time.monotonic() < deadline, "greedy's queries did not start"
            time.sleep(0.05)
        time.sleep(0.3)  # all six have sent theirs by now
        assert len(first.split(",")) == 2 and pg.sql(sleeping, "postgres") == first
        assert small.execute("select 'small'").fetchone() == ("small",)
        # Served while greedy's first two still sleep: a free server, not one given back.
        assert pg.sql(sleeping, "postgres") == first
        for t in threads:
            t.join(15)
        assert errors == []  # the rest of greedy's clients waited their turn, none failed
    finally:
        for c in [*greedy, small]:
            c.close()
