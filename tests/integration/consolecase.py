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


def start_with_http(pooler: PoolerFactory, mode: str = "transaction", *, pool_size: int = 5,
                    databases: dict[str, str] | None = None,
                    **settings: Any) -> tuple[PoolerProc, str]:
    """A pooler with the console users and the HTTP endpoint on a free port; (proc, base URL)."""
    from poolcase import USERLIST

    from support import free_port

    port = free_port()
    main = {"pool_mode": mode, "default_pool_size": str(pool_size), "auth_type": "trust",
            "admin_users": ADMIN, "stats_users": STATS, "server_login_retry": "1"}
    main.update({k: str(v) for k, v in settings.items()})
    proc = pooler({"databases": databases or pooler.databases(), "pgbouncer": main,
                   "pgusher": {"http_port": str(port), "http_addr": "127.0.0.1"}}, USERLIST)
    return proc, f"http://127.0.0.1:{port}"


def http_get(url: str) -> tuple[int, str, str]:
    """(status, content type, body) of a GET."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()
