"""Transaction mode keeps state that cannot move: a client with a temporary table, a session
advisory lock or a WITH HOLD cursor keeps its server while that state exists, and gives it
back once it is gone (the session is read back after each of its transactions). Over
max_pinned_servers, a client is told and disconnected instead of losing its state unseen.
Real PostgreSQL and psycopg."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import psycopg
import pytest
from consolecase import http_get
from poolcase import USERLIST

from support import PgCluster, PoolerFactory, PoolerProc, free_port


def start(pooler: PoolerFactory, pool_size: int, **pgusher: str) -> PoolerProc:
    return pooler({"databases": pooler.databases(),
                   "pgbouncer": {"pool_mode": "transaction", "auth_type": "trust",
                                 "default_pool_size": str(pool_size)},
                   "pgusher": pgusher}, USERLIST)


def connect(proc: PoolerProc) -> psycopg.Connection:
    return psycopg.connect(proc.dsn("postgres"), autocommit=True, prepare_threshold=None)


def test_a_temp_table_lives_while_others_share_the_pool(pooler: PoolerFactory) -> None:
    proc = start(pooler, 2)
    owner = connect(proc)
    others = [connect(proc) for _ in range(4)]
    try:
        owner.execute("create temp table scratch (n int)")
        for i in range(10):
            owner.execute("insert into scratch values (%s)", (i,))
            for other in others:
                assert other.execute("select to_regclass('scratch')").fetchone() == (None,)
        assert owner.execute("select sum(n) from scratch").fetchone() == (45,)
    finally:
        for c in [owner, *others]:
            c.close()


def test_the_server_comes_back_once_the_state_is_gone(pooler: PoolerFactory) -> None:
    """Pool of one: while the owner holds its temp table, another client waits; DROP gives
    the server back, reset (the table is gone for everyone)."""
    proc = start(pooler, 1)
    owner = connect(proc)
    other = connect(proc)
    got: list[object] = []
    try:
        owner.execute("create temp table held (n int)")
        thread = threading.Thread(
            target=lambda: got.append(other.execute("select 'served'").fetchone()))
        thread.start()
        thread.join(1.0)
        assert got == []  # the only server is pinned
        assert owner.execute("select count(*) from held").fetchone() == (0,)
        owner.execute("drop table held")
        thread.join(10)
        assert got == [("served",)]
        assert owner.execute("select 1").fetchone() == (1,)
    finally:
        owner.close()
        other.close()


def test_a_session_advisory_lock_stays_with_its_client(pooler: PoolerFactory) -> None:
    proc = start(pooler, 2)
    owner = connect(proc)
    other = connect(proc)
    try:
        owner.execute("select pg_advisory_lock(4242)")
        for _ in range(3):
            assert other.execute("select pg_try_advisory_lock(4242)").fetchone() == (False,)
        # The same session still holds it, so its unlock works (no "you don't own" warning).
        assert owner.execute("select pg_advisory_unlock(4242)").fetchone() == (True,)
        assert other.execute("select pg_try_advisory_lock(4242)").fetchone() == (True,)
        assert other.execute("select pg_advisory_unlock(4242)").fetchone() == (True,)
    finally:
        owner.close()
        other.close()


def test_a_with_hold_cursor_is_fetched_across_transactions(pooler: PoolerFactory) -> None:
    proc = start(pooler, 2)
    owner = connect(proc)
    others = [connect(proc) for _ in range(3)]
    try:
        owner.execute("declare numbers cursor with hold for select generate_series(1, 10)")
        seen = []
        for _ in range(5):
            for other in others:
                other.execute("select 1")
            seen += [r[0] for r in owner.execute("fetch 2 from numbers").fetchall()]
        assert seen == list(range(1, 11))
        owner.execute("close numbers")
    finally:
        for c in [owner, *others]:
            c.close()


def test_state_made_where_sql_does_not_show_it_pins_too(pooler: PoolerFactory,
                                                        pg: PgCluster) -> None:
    pg.sql("create or replace function make_scratch() returns void language plpgsql as "
           "$$begin create temp table if not exists fn_scratch (n int); end$$")
    proc = start(pooler, 2)
    owner = connect(proc)
    others = [connect(proc) for _ in range(3)]
    try:
        owner.execute("select make_scratch()")
        for other in others:
            other.execute("select 1")
        owner.execute("insert into fn_scratch values (1)")
        assert owner.execute("select count(*) from fn_scratch").fetchone() == (1,)
    finally:
        for c in [owner, *others]:
            c.close()


def test_over_max_pinned_servers_the_client_is_told(pooler: PoolerFactory) -> None:
    proc = start(pooler, 3, max_pinned_servers="1")
    first = connect(proc)
    second = connect(proc)
    try:
        first.execute("create temp table one (n int)")
        with pytest.raises(psycopg.OperationalError, match="max_pinned_servers=1"):
            second.execute("create temp table two (n int)")
            second.execute("select 1")  # the error may come with the next message
        assert first.execute("select count(*) from one").fetchone() == (0,)
    finally:
        first.close()
        second.close()


def test_pin_state_off_keeps_the_old_reset(pooler: PoolerFactory) -> None:
    proc = start(pooler, 1, pin_state="0")
    owner = connect(proc)
    try:
        owner.execute("create temp table gone (n int)")
        with pytest.raises(psycopg.errors.UndefinedTable):
            owner.execute("select * from gone")
    finally:
        owner.close()


def test_metrics_show_who_is_pinned_and_why(pooler: PoolerFactory) -> None:
    port = free_port()
    proc = start(pooler, 2, http_port=str(port), http_addr="127.0.0.1")
    owner = connect(proc)
    try:
        owner.execute("select pg_advisory_lock(99)")
        # The read-back that pins it runs after the reply: the series comes soon after.
        series = ('pgusher_pool_client_pinned_connections{database="app",user="postgres",'
                  'reason="session advisory lock"} 1')
        metrics = f"http://127.0.0.1:{port}/metrics"
        wait_for(lambda: series in http_get(metrics)[2], "not shown as pinned")
        owner.execute("select pg_advisory_unlock(99)")
        # The read-back that unpins it runs after the reply: the series goes soon after.
        wait_for(lambda: "reason=" not in pinned_series(http_get(metrics)[2]),
                 "still pinned after the unlock")
    finally:
        owner.close()


def pinned_series(body: str) -> str:
    return body.split("pgusher_pool_client_pinned_connections", 1)[1].split("# HELP", 1)[0]


def wait_for(done: Callable[[], bool], what: str) -> None:
    """Poll ``done`` for up to 10 s; fail with ``what`` if it never holds."""
    deadline = time.monotonic() + 10
    while not done():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)
