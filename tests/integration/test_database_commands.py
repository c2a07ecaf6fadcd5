"""DROP DATABASE, ALTER DATABASE and CREATE DATABASE ... TEMPLATE through the pooler in session
mode: the pooler's own idle connections to the database do not make them fail with "being
accessed by other users" (a direct connection would not have those connections); another
client really connected to it still does, with PostgreSQL's own error."""

from __future__ import annotations

import psycopg
import pytest
from poolcase import USERLIST

from support import PgCluster, PoolerFactory, PoolerProc

NAMES = ("dbc_victim", "dbc_renamed", "dbc_copy")


@pytest.fixture
def proc(pg: PgCluster, pooler: PoolerFactory) -> PoolerProc:
    for name in NAMES:
        pg.sql(f"drop database if exists {name}", "postgres")
    pg.sql("create database dbc_victim", "postgres")
    base = f"host={pg.host} port={pg.port}"
    databases = {"app": f"{base} dbname=app", **{n: f"{base} dbname={n}" for n in NAMES}}
    return pooler({"databases": databases,
                   "pgbouncer": {"pool_mode": "session", "auth_type": "trust",
                                 "default_pool_size": "4"}}, USERLIST)


def connect(proc: PoolerProc, dbname: str) -> psycopg.Connection:
    return psycopg.connect(proc.dsn("postgres", "postgres", dbname=dbname), autocommit=True)


def leave_idle_servers(proc: PoolerProc, dbname: str, count: int = 2) -> None:
    """Clients that used ``dbname`` and left: their servers stay in the pool, idle."""
    conns = [connect(proc, dbname) for _ in range(count)]
    for conn in conns:
        conn.execute("select 1")
    for conn in conns:
        conn.close()


def backends(pg: PgCluster, dbname: str) -> int:
    return int(pg.sql(f"select count(*) from pg_stat_activity where datname = '{dbname}'",
                      "postgres"))


def test_drop_database_closes_the_poolers_idle_connections(proc: PoolerProc,
                                                           pg: PgCluster) -> None:
    leave_idle_servers(proc, "dbc_victim")
    assert backends(pg, "dbc_victim") == 2
    with connect(proc, "app") as admin:
        admin.execute("DROP DATABASE dbc_victim")
        assert admin.execute("select 1").fetchone() == (1,)  # the session goes on
    assert pg.sql("select count(*) from pg_database where datname = 'dbc_victim'",
                  "postgres") == "0"
    assert "closed 2 idle server connections to dbc_victim before its DROP" in proc.log_text()


def test_rename_and_template_copy_work_too(proc: PoolerProc, pg: PgCluster) -> None:
    leave_idle_servers(proc, "dbc_victim")
    with connect(proc, "app") as admin:
        admin.execute('alter database "dbc_victim" rename to dbc_renamed')
        leave_idle_servers(proc, "dbc_renamed")
        admin.execute("create database dbc_copy template dbc_renamed")
        leave_idle_servers(proc, "dbc_copy", 1)
        admin.execute("drop database if exists dbc_copy")
    names = pg.sql("select string_agg(datname, ',' order by datname) from pg_database "
                   "where datname like 'dbc%'", "postgres")
    assert names == "dbc_renamed"


def test_a_client_really_connected_still_blocks_it(proc: PoolerProc) -> None:
    holder = connect(proc, "dbc_victim")
    try:
        holder.execute("select 1")
        with connect(proc, "app") as admin:
            with pytest.raises(psycopg.errors.ObjectInUse) as err:
                admin.execute("drop database dbc_victim")
            assert "being accessed by other users" in str(err.value)
            assert admin.execute("select 2").fetchone() == (2,)
        assert holder.execute("select 3").fetchone() == (3,)
    finally:
        holder.close()
