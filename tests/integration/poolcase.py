"""Shared set-up for the integration tests: a pooler in front of the test cluster."""

from __future__ import annotations

from typing import Any

from support import PASSWORDS, PgCluster, PoolerFactory, PoolerProc

USERLIST = {user: pw for user, pw in PASSWORDS.items() if pw is not None}
USERLIST["trust_user"] = ""


def start(pooler: PoolerFactory, mode: str = "transaction", *, pool_size: int = 5,
          databases: dict[str, str] | None = None, userlist: dict[str, str] | None = None,
          **settings: Any) -> PoolerProc:
    """A pooler with auth_type trust unless told otherwise, and the given settings."""
    main = {
        "pool_mode": mode,
        "default_pool_size": str(pool_size),
        "auth_type": "trust",
        "server_login_retry": "1",
    }
    main.update({k: str(v) for k, v in settings.items()})
    return pooler({"databases": databases or pooler.databases(), "pgbouncer": main},
                  userlist if userlist is not None else USERLIST)


def pooler_backends(pg: PgCluster, since: str, user: str = "postgres") -> int:
    """Server connections of ``user`` to app that started at or after ``since`` (a timestamp
    taken from PostgreSQL), so backends of earlier tests that are still exiting do not count."""
    return int(pg.sql(
        "select count(*) from pg_stat_activity where datname = 'app' and "
        f"usename = '{user}' and backend_type = 'client backend' and "
        f"pid <> pg_backend_pid() and backend_start >= '{since}'", "postgres"))


def pg_now(pg: PgCluster) -> str:
    return pg.sql("select now()::text", "postgres")
