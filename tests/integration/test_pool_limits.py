"""Server connection limits that cannot be overshot unseen: the role the pooler logs in as has
a CONNECTION LIMIT on the server equal to the pooler's limit, so a single connection too many
is refused by PostgreSQL itself (53300) and fails a client, whatever the timing. Sampling
pg_stat_activity could miss a short overshoot; this cannot."""

from __future__ import annotations

import threading

import psycopg
import pytest

from support import PgCluster, PoolerFactory

ROLE = "limit_user"
PASSWORD = "limit_pass"


@pytest.fixture
def limited(pg: PgCluster) -> str:
    pg.sql(f"""
        do $$ begin
          if not exists (select 1 from pg_roles where rolname = '{ROLE}') then
            create role {ROLE} login password '{PASSWORD}';
          end if;
        end $$;
        grant connect on database app to {ROLE};
    """, "postgres")
    return ROLE


def _hammer(dsn: str, clients: int, rounds: int) -> list[str]:
    errors: list[str] = []

    def client() -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                for _ in range(rounds):
                    conn.execute("select pg_sleep(0.002)")
                    with conn.transaction():
                        conn.execute("select 1")
                        conn.execute("select pg_sleep(0.001)")
        except psycopg.Error as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    return errors


@pytest.mark.parametrize("limit_setting,workers", [
    ({"pool_size": 3}, 1),
    ({"pool_size": 6, "max_user_connections": 3}, 1),
    ({"pool_size": 6, "max_db_connections": 3}, 1),
    ({"pool_size": 3}, 2),
])
def test_no_server_connection_beyond_the_limit(pg: PgCluster, pooler: PoolerFactory,
                                                limited: str, limit_setting: dict[str, int],
                                                workers: int) -> None:
    pg.sql(f"alter role {ROLE} connection limit 3", "postgres")
    try:
        main = {"pool_mode": "transaction", "auth_type": "trust", "server_login_retry": "1",
                "default_pool_size": str(limit_setting["pool_size"])}
        main.update({k: str(v) for k, v in limit_setting.items() if k != "pool_size"})
        proc = pooler({"databases": pooler.databases(), "pgbouncer": main,
                       "pgusher": {"workers": str(workers)}}, {ROLE: PASSWORD})
        errors = _hammer(proc.dsn(ROLE, PASSWORD), clients=20, rounds=15)
        assert errors == []
    finally:
        pg.sql(f"alter role {ROLE} connection limit -1", "postgres")
