"""Connection ids, SHOW SOCKETS with the console's own connections, and server_lifetime 0.

Clients and servers take their ids from one sequence when the connection is made, as
PgBouncer numbers its sockets; a console connection keeps the id its login got. With
server_lifetime = 0 a server connection serves one client and is then closed."""

from __future__ import annotations

import time

import psycopg
from consolecase import console, show, start_console

from support import PgCluster, PoolerFactory


def test_ids_follow_connection_order(pg: PgCluster, pooler: PoolerFactory) -> None:
    proc = start_console(pooler, "session", server_lifetime=0)
    with console(proc) as admin:
        sockets = show(admin, "SOCKETS")
        assert [(r["type"], r["database"]) for r in sockets] == [("C", "pgbouncer")]
        first = sockets[0]["id"]
        assert show(admin, "CLIENTS")[0]["id"] == first
        for i in (1, 2):
            with psycopg.connect(proc.dsn("postgres"), autocommit=True) as conn:
                conn.execute("select 1")
                rows = show(admin, "SOCKETS")
                assert sorted(r["id"] for r in rows) == [first, first + 2 * i - 1,
                                                         first + 2 * i]
                assert [r["id"] for r in show(admin, "SERVERS")] == [first + 2 * i]
            # server_lifetime 0: the server went with its client.
            deadline = time.monotonic() + 5
            while show(admin, "SERVERS"):
                assert time.monotonic() < deadline
                time.sleep(0.2)
    assert "closing because: server lifetime over" in proc.log_text()


def test_database_server_lifetime_zero_means_the_global_value(pg: PgCluster,
                                                              pooler: PoolerFactory) -> None:
    db = f"host=127.0.0.1 port={pg.port} dbname=app server_lifetime=0"
    proc = start_console(pooler, "session", databases={"app": db}, server_lifetime=3600)
    with console(proc) as admin:
        for _ in range(2):
            with psycopg.connect(proc.dsn("postgres"), autocommit=True) as conn:
                conn.execute("select 1")
        time.sleep(1.5)
        servers = show(admin, "SERVERS")
        assert len(servers) == 1  # kept, and used by both clients
        row = next(r for r in show(admin, "DATABASES") if r["name"] == "app")
        assert row["server_lifetime"] == 3600
