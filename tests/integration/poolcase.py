"""Shared set-up for the integration tests: a pooler in front of the test cluster."""

from __future__ import annotations

from typing import Any

from support import PASSWORDS, PgCluster, PoolerFactory, PoolerProc

USERLIST = {user: pw for user, pw in PASSWORDS.items() if pw is not None}
USERLIST["trust_user"] = ""


def start(pooler: PoolerFactory, mode: str = "transaction", *, pool_size: int = 5,
          databases: dict[str, str] | None = None, userlist: dict[str, str] | None = None,
          pgusher: dict[str, str] | None = None, **settings: Any) -> PoolerProc:
    """A pooler with auth_type trust unless told otherwise, and the given settings
    (``pgusher``: keys of the [pgusher] section)."""
    main = {
        "pool_mode": mode,
        "default_pool_size": str(pool_size),
        "auth_type": "trust",
        "server_login_retry": "1",
    }
    main.update({k: str(v) for k, v in settings.items()})
    sections: dict[str, dict[str, str]] = {"databases": databases or pooler.databases(),
                                           "pgbouncer": main}
    if pgusher:
        sections["pgusher"] = pgusher
    return pooler(sections, userlist if userlist is not None else USERLIST)


def pooler_backends(pg: PgCluster, since: str, user: str = "postgres") -> int:
    """Server connections of ``user`` to app that started at or after ``since`` (a timestamp
    taken from PostgreSQL), so backends of earlier tests that are still exiting do not count."""
    return int(pg.sql(
        "select count(*) from pg_stat_activity where datname = 'app' and "
        f"usename = '{user}' and backend_type = 'client backend' and "
        f"pid <> pg_backend_pid() and backend_start >= '{since}'", "postgres"))


def pg_now(pg: PgCluster) -> str:
    return pg.sql("select now()::text", "postgres")


LOW_ROLE = "hidden_low"  # a role scram_user may SET ROLE to


def create_session_changers(pg: PgCluster) -> None:
    """Schemas hs_a and hs_b, the role LOW_ROLE (granted to scram_user), and a function, a
    function and a procedure that change the session where no SQL text shows it."""
    pg.sql(f"""
        do $$ begin
          if not exists (select 1 from pg_roles where rolname = '{LOW_ROLE}') then
            create role {LOW_ROLE};
          end if;
        end $$;
        grant {LOW_ROLE} to scram_user;
        create schema if not exists hs_a;
        create schema if not exists hs_b;
        grant usage on schema hs_a, hs_b to public;
        create or replace function public.hs_setrole() returns void language plpgsql
          as $f$begin execute 'SET ROLE {LOW_ROLE}'; end$f$;
        create or replace function public.hs_settings() returns void language plpgsql
          as $f$begin perform set_config('search_path', 'hs_a, public', false);
                      perform set_config('work_mem', '7MB', false);
                      perform set_config('statement_timeout', '41s', false); end$f$;
        create or replace procedure public.hs_proc() language plpgsql
          as $f$begin perform set_config('search_path', 'hs_a', false); end$f$;
        grant execute on function public.hs_setrole(), public.hs_settings() to public;
        grant execute on procedure public.hs_proc() to public;
    """)
