"""Console connections count as clients of the database ``pgbouncer`` and of their user:
SHOW DATABASES and SHOW USERS show them, and the client limits apply to them, except to
admin users on the console. A failed login under an unknown name leaves no SHOW USERS row."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from consolecase import ADMIN, STATS, console, show, start_console

from support import PoolerFactory


def _row(rows: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(r for r in rows if r["name"] == name)


def test_console_counted_in_show_databases_and_users(pooler: PoolerFactory) -> None:
    proc = start_console(pooler, max_db_client_connections=5)
    with console(proc) as admin, console(proc, STATS) as stats:
        db = _row(show(admin, "DATABASES"), "pgbouncer")
        assert db["current_client_connections"] == 2
        assert db["max_client_connections"] == 5
        assert _row(show(admin, "USERS"), STATS)["current_client_connections"] == 1
        assert _row(show(stats, "USERS"), ADMIN)["current_client_connections"] == 1
    with console(proc) as admin:
        assert _row(show(admin, "DATABASES"), "pgbouncer")["current_client_connections"] == 1
        assert _row(show(admin, "USERS"), ADMIN)["current_client_connections"] == 1
        assert _row(show(admin, "USERS"), STATS)["current_client_connections"] == 0


def test_client_limits_hold_for_the_console_but_not_for_admins(pooler: PoolerFactory) -> None:
    proc = start_console(pooler, max_db_client_connections=2, max_user_client_connections=1)
    held = [console(proc, STATS)]
    # The stats user has its one connection: the next is refused, with PgBouncer's words.
    with pytest.raises(psycopg.OperationalError,
                       match=r"client connections exceeded \(max_user_client_connections\)"):
        console(proc, STATS)
    held.append(console(proc))
    # The console database is full (2), yet admins still get in, any number of them.
    held.append(console(proc))
    assert _row(show(held[-1], "DATABASES"), "pgbouncer")["current_client_connections"] == 3
    for conn in held:
        conn.close()
    # An ordinary database counts its own clients: the console's do not fill it.
    with console(proc) as admin, console(proc) as again, \
            psycopg.connect(proc.dsn(STATS), autocommit=True) as app_client:
        assert app_client.execute("select 1").fetchone() == (1,)
        assert _row(show(again, "DATABASES"), "app")["current_client_connections"] == 1
        assert admin.closed is False


def test_max_client_conn_does_not_lock_out_the_console(pooler: PoolerFactory) -> None:
    proc = start_console(pooler, max_client_conn=1)
    with psycopg.connect(proc.dsn(STATS), autocommit=True) as first:
        with pytest.raises(psycopg.OperationalError, match=r"max_client_conn"):
            psycopg.connect(proc.dsn(STATS), autocommit=True)
        with console(proc) as admin:
            assert _row(show(admin, "DATABASES"), "app")["current_client_connections"] == 1
        assert first.execute("select 1").fetchone() == (1,)


def test_failed_login_of_unknown_user_leaves_no_users_row(pooler: PoolerFactory) -> None:
    proc = start_console(pooler)
    with pytest.raises(psycopg.OperationalError, match="authentication failed"):
        psycopg.connect(proc.dsn("no_such_user_here"), autocommit=True)
    with console(proc) as admin:
        assert not [r for r in show(admin, "USERS") if r["name"] == "no_such_user_here"]
