"""Shared set-up for the console tests: a pooler with admin and stats users, console helpers."""

from __future__ import annotations

from typing import Any

import psycopg
from poolcase import start

from support import PoolerFactory, PoolerProc

ADMIN = "postgres"
STATS = "md5_user"


def start_console(pooler: PoolerFactory, mode: str = "transaction", **settings: Any) -> PoolerProc:
    settings.setdefault("admin_users", ADMIN)
    settings.setdefault("stats_users", STATS)
    return start(pooler, mode, **settings)


def console(proc: PoolerProc, user: str = ADMIN, **kw: Any) -> psycopg.Connection[Any]:
    """A psycopg connection to the console (autocommit: the console knows no BEGIN)."""
    return psycopg.connect(proc.dsn(user, dbname="pgbouncer", **kw), autocommit=True)


def show(conn: psycopg.Connection[Any], what: str) -> list[dict[str, Any]]:
    cur = conn.execute(f"SHOW {what}")
    assert cur.description is not None
    names = [d.name for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def pool_row(conn: psycopg.Connection[Any], db: str = "app",
             user: str = "postgres") -> dict[str, Any]:
    for row in show(conn, "POOLS"):
        if row["database"] == db and row["user"] == user:
            return row
    raise AssertionError(f"no pool {db}/{user}")
