"""Differential isolation: 20 clients on pools of 2 servers, each with a twin connected
straight to PostgreSQL. Every client runs its own random mix of everything that changes a
session (SET, RESET, set_config plain and bound, SET ROLE, SET SESSION AUTHORIZATION, the same
in DO blocks, functions and procedures, protocol and SQL prepared statements, transactions
that commit, roll back or fail) on both connections; after every transaction what the pooled
client sees must be exactly what its twin sees."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

import psycopg
from poolcase import LOW_ROLE, create_session_changers, start

from support import PgCluster, PoolerFactory

LOW = LOW_ROLE
CLIENTS = 20
ROUNDS = 500  # per client: 10,000 transactions in all

PROBE = ("select current_user::text, session_user::text, current_setting('search_path'),"
         " current_setting('work_mem'), current_setting('statement_timeout'),"
         " coalesce(current_setting('myapp.tenant', true), ''),"
         " current_setting('default_transaction_read_only')")

Step = Callable[[psycopg.Connection], None]


def _sql(text: str, params: list[object] | None = None, prepare: bool | None = None) -> Step:
    def run(conn: psycopg.Connection) -> None:
        conn.execute(text, params, prepare=prepare)  # type: ignore[arg-type]
    run.__doc__ = f"{text} {params or ''}{' prepared' if prepare else ''}"
    return run


def _in_transaction(steps: list[Step], end: str) -> Step:
    def run(conn: psycopg.Connection) -> None:
        conn.execute("begin")
        try:
            for step in steps:
                step(conn)
            if end == "fail":
                conn.execute("select 1/0")
        except psycopg.Error:
            conn.execute("rollback")
            return
        conn.execute(end)
    run.__doc__ = "begin; " + "; ".join(step.__doc__ or "" for step in steps) + f"; {end}"
    return run


def _plain_steps(rng: random.Random, superuser: bool) -> list[Step]:
    tenant = f"t{rng.randrange(100)}"
    mem = f"{rng.randrange(1, 9)}MB"
    steps = [
        _sql("set search_path = hs_a, public"),
        _sql("reset search_path"),
        _sql(f"set work_mem = '{mem}'"),
        _sql("reset work_mem"),
        _sql("reset all"),
        _sql("select set_config('search_path', 'hs_b', false)"),
        _sql("select set_config('myapp.tenant', %s, false)", [tenant]),
        _sql("select set_config('myapp.tenant', %s, false)", [tenant], prepare=True),
        _sql("select set_config('work_mem', %s, false)", [mem], prepare=True),
        _sql(f"set role {LOW}"),
        _sql("reset role"),
        _sql("select set_config('role', %s, false)", [LOW]),
        _sql(f"DO $$BEGIN EXECUTE 'SET ROLE {LOW}'; END$$"),
        _sql(f"DO $$BEGIN PERFORM set_config('work_mem', '{mem}', false); END$$"),
        _sql("DO $$BEGIN SET search_path = hs_b; END$$"),
        _sql("select public.hs_setrole()"),
        _sql("select public.hs_settings()"),
        _sql("call public.hs_proc()"),
        _sql("set session characteristics as transaction read only"),
        _sql("set session characteristics as transaction read write"),
        _sql("set schema 'hs_a'"),
        _sql("select 1"),
    ]
    if superuser:
        steps += [
            _sql("set session authorization scram_user"),
            _sql("reset session authorization"),
            _sql("set session authorization default"),
            _sql("select set_config('session_authorization', %s, false)", ["scram_user"]),
        ]
    return steps


def _one_transaction(rng: random.Random, superuser: bool, prepared: set[str]) -> Step:
    choice = rng.random()
    if choice < 0.15:
        inner = [rng.choice(_plain_steps(rng, superuser)) for _ in range(rng.randrange(1, 4))]
        return _in_transaction(inner, rng.choice(["commit", "rollback", "fail"]))
    if choice < 0.25:
        name = f"sp{rng.randrange(3)}"
        body = rng.choice([f"select set_config('role', '{LOW}', false)",
                           "select set_config('search_path', 'hs_a', false)",
                           "select 42"])

        had = name in prepared

        def sql_prepared(conn: psycopg.Connection) -> None:
            if had:
                conn.execute(f"deallocate {name}")
            conn.execute(f"prepare {name} as {body}")
            conn.execute(f"execute {name}")
        sql_prepared.__doc__ = f"prepare {name} as {body}; execute {name}"
        prepared.add(name)
        return sql_prepared
    return rng.choice(_plain_steps(rng, superuser))


def _client(index: int, pooled_dsn: str, direct_dsn: str, superuser: bool,
            violations: list[str], done: list[int]) -> None:
    rng = random.Random(index)
    prepared: set[str] = set()
    history: list[str] = []
    with psycopg.connect(pooled_dsn, autocommit=True) as pooled, \
            psycopg.connect(direct_dsn, autocommit=True) as direct:
        for n in range(ROUNDS):
            step = _one_transaction(rng, superuser, prepared)
            history.append(step.__doc__ or "")
            outcome = []
            for conn in (pooled, direct):
                try:
                    step(conn)
                    outcome.append("ok")
                except psycopg.Error as exc:
                    outcome.append(f"{type(exc).__name__}")
                    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                        try:
                            conn.execute("rollback")
                        except psycopg.Error as again:
                            which = "pooled" if conn is pooled else "direct"
                            violations.append(f"client {index} round {n}: rollback failed on "
                                              f"{which}: {again} after {history[-8:]}")
                            return
            seen = [conn.execute(PROBE).fetchone() for conn in (pooled, direct)]
            if outcome[0] != outcome[1] or seen[0] != seen[1]:
                violations.append(f"client {index} round {n}: {outcome} pooled={seen[0]} "
                                  f"direct={seen[1]} after {history[-8:]}")
                return
            done[index] += 1


def test_twenty_clients_see_what_a_direct_connection_shows(pg: PgCluster,
                                                          pooler: PoolerFactory) -> None:
    create_session_changers(pg)
    proc = start(pooler, pool_size=2)
    violations: list[str] = []
    done = [0] * CLIENTS
    threads = []
    for i in range(CLIENTS):
        superuser = i % 2 == 0
        user, password = ("postgres", "postgres") if superuser else ("scram_user", "scram_pass")
        threads.append(threading.Thread(target=_client, args=(
            i, proc.dsn(user, password), pg.dsn(user=user, password=password, dbname="app"),
            superuser, violations, done)))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=900)
    assert not any(t.is_alive() for t in threads)
    assert violations == []
    assert sum(done) == CLIENTS * ROUNDS
