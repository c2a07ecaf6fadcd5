"""``workers = N``: several processes on one port that behave as one pooler.

Each test starts pgusher with two workers in front of the test cluster and checks, with real
clients, what must hold for the whole pooler: the pool limits, cancel requests whichever
worker receives them, the console and /metrics totals, and the supervisor's restarts.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from typing import Any

import psycopg
import pytest
from consolecase import ADMIN, STATS, console, http_get, show
from poolcase import USERLIST, pg_now, pooler_backends

from support import PgCluster, PoolerFactory, PoolerProc, free_port

WORKERS = 2


def start_workers(pooler: PoolerFactory, *, pool_size: int = 4, http: bool = False,
                  workers: int = WORKERS, **settings: Any) -> tuple[PoolerProc, str]:
    main = {"pool_mode": "transaction", "default_pool_size": str(pool_size),
            "auth_type": "trust", "admin_users": ADMIN, "stats_users": STATS,
            "server_login_retry": "1"}
    main.update({k: str(v) for k, v in settings.items()})
    own = {"workers": str(workers)}
    base = ""
    if http:
        port = free_port()
        own.update(http_port=str(port), http_addr="127.0.0.1")
        base = f"http://127.0.0.1:{port}"
    proc = pooler({"databases": pooler.databases(), "pgbouncer": main, "pgusher": own},
                  USERLIST)
    wait_workers(proc, workers)
    return proc, base


def children(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as fh:
            found += [int(p) for p in fh.read().split()]
    return found


def wait_workers(proc: PoolerProc, count: int, timeout: float = 15) -> list[int]:
    """The worker pids, once ``count`` of them run and each has taken a connection."""
    assert proc.pid is not None
    deadline = time.monotonic() + timeout
    while True:
        kids = children(proc.pid)
        if len(kids) == count:
            for _ in range(10):
                with psycopg.connect(proc.dsn("postgres", dbname="pgbouncer"),
                                     autocommit=True):
                    pass
            if set(kids) <= logging_pids(proc):
                return kids
        if time.monotonic() > deadline:
            raise AssertionError(f"workers: {kids}\n{proc.log_text()[-3000:]}")
        time.sleep(0.2)


def logging_pids(proc: PoolerProc) -> set[int]:
    """The processes that wrote log lines (each line carries its writer's pid)."""
    return {int(m) for m in re.findall(r"UTC \[(\d+)\] ", proc.log_text())}


def run_clients(proc: PoolerProc, count: int, sql: str, repeat: int) -> list[BaseException]:
    """``count`` clients at once, each running ``sql`` ``repeat`` times; what they raised."""
    errors: list[BaseException] = []

    def client() -> None:
        try:
            with psycopg.connect(proc.dsn("postgres"), autocommit=True) as conn:
                for _ in range(repeat):
                    conn.execute(sql)
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    hung = [t for t in threads if t.is_alive()]
    assert not hung, f"{len(hung)} clients still running after 60 s"
    return errors


def test_workers_share_the_port_and_serve(pooler: PoolerFactory) -> None:
    proc, _ = start_workers(pooler)
    assert proc.pid is not None
    kids = children(proc.pid)
    assert len(kids) == WORKERS
    # Every worker takes connections: each log line carries the pid that wrote it.
    for _ in range(60):
        with psycopg.connect(proc.dsn("postgres"), autocommit=True) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
    assert set(kids) <= logging_pids(proc)


def test_pool_size_holds_for_the_whole_pooler(pooler: PoolerFactory, pg: PgCluster) -> None:
    since = pg_now(pg)
    proc, _ = start_workers(pooler, pool_size=4)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, pooler_backends(pg, since))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    errors = run_clients(proc, 40, "select pg_sleep(0.02)", 5)
    stop.set()
    sampler.join()
    assert not errors, errors[:3]
    assert 1 <= peak <= 4, peak


def test_pool_size_one_serves_clients_of_every_worker(pooler: PoolerFactory,
                                                      pg: PgCluster) -> None:
    """One server for two workers: it moves to whichever worker has clients waiting."""
    since = pg_now(pg)
    proc, _ = start_workers(pooler, pool_size=1)
    errors = run_clients(proc, 16, "select 1", 3)
    assert not errors, errors[:3]
    assert pooler_backends(pg, since) <= 1


def test_max_client_conn_counts_every_worker(pooler: PoolerFactory) -> None:
    proc, _ = start_workers(pooler, max_client_conn=6)
    held = []
    refused = 0
    try:
        for _ in range(12):
            try:
                conn = psycopg.connect(proc.dsn("postgres"), autocommit=True)
                conn.execute("select 1")
                held.append(conn)
            except psycopg.OperationalError as exc:
                assert "max_client_conn" in str(exc)
                refused += 1
        assert len(held) == 6 and refused == 6
    finally:
        for conn in held:
            conn.close()


def test_cancel_reaches_the_right_worker(pooler: PoolerFactory) -> None:
    """psycopg's cancel opens a new connection; whichever worker gets it, the query stops.

    The kernel picks the worker for each connection, so the test goes on until a cancel
    has been passed from one worker to another at least once (and every cancel worked).
    """
    proc, _ = start_workers(pooler, pool_size=10, verbose=1)
    for attempt in range(40):
        with psycopg.connect(proc.dsn("postgres"), autocommit=True) as conn:
            # The key's secret names the worker that issued it (test_workers_unit.py).
            started = time.monotonic()
            timer = threading.Timer(0.3, conn.cancel)
            timer.start()
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("select pg_sleep(20)")
            timer.join()
            assert time.monotonic() - started < 10
            assert conn.execute("select 2").fetchone() == (2,)
        if attempt >= 3 and "forwarding cancel request to worker" in proc.log_text():
            return
    raise AssertionError("no cancel request crossed between workers in 40 tries")


def test_console_reports_the_whole_pooler(pooler: PoolerFactory) -> None:
    proc, _ = start_workers(pooler, pool_size=10)
    held = [psycopg.connect(proc.dsn("postgres"), autocommit=True) for _ in range(10)]
    try:
        for conn in held:
            conn.execute("select 1")
        # Every console connection (whichever worker takes it) sees all ten clients.
        for _ in range(6):
            with console(proc) as admin:
                clients = [r for r in show(admin, "CLIENTS") if r["database"] == "app"]
                assert len(clients) == 10
                assert len({r["id"] for r in clients}) == 10
                pools = [r for r in show(admin, "POOLS") if r["database"] == "app"]
                assert len(pools) == 1 and pools[0]["cl_active"] == 10
                stats = {r["database"]: r for r in show(admin, "STATS")}
                assert int(stats["app"]["total_xact_count"]) >= 10
                databases = {r["name"]: r for r in show(admin, "DATABASES")}
                assert databases["app"]["current_client_connections"] == 10
                assert databases["app"]["pool_size"] == 10
    finally:
        for conn in held:
            conn.close()


def test_console_commands_act_on_every_worker(pooler: PoolerFactory) -> None:
    proc, _ = start_workers(pooler, pool_size=10)
    held = [psycopg.connect(proc.dsn("postgres"), autocommit=True) for _ in range(8)]
    try:
        with console(proc) as admin:
            admin.execute("PAUSE app")
            for row in show(admin, "DATABASES"):
                if row["name"] == "app":
                    assert row["paused"] == 1
            admin.execute("RESUME app")
            for conn in held:
                assert conn.execute("select 3").fetchone() == (3,)
            # KILL_CLIENT finds the client on whichever worker has it.
            ids = [r["id"] for r in show(admin, "CLIENTS") if r["database"] == "app"]
            for ident in ids:
                admin.execute(f"KILL_CLIENT {ident}")
            left = [r for r in show(admin, "CLIENTS") if r["database"] == "app"]
            assert left == []
            with pytest.raises(psycopg.errors.Error, match="client not found"):
                admin.execute("KILL_CLIENT 999999")
            admin.execute("SET default_pool_size = 3")
            for row in show(admin, "CONFIG"):
                if row["key"] == "default_pool_size":
                    assert row["value"] == "3"
    finally:
        for conn in held:
            conn.close()


def test_metrics_report_the_whole_pooler(pooler: PoolerFactory) -> None:
    proc, base = start_workers(pooler, pool_size=10, http=True)
    for _ in range(30):
        with psycopg.connect(proc.dsn("postgres", application_name="wk"),
                             autocommit=True) as conn:
            conn.execute("select 1")
    want = 'pgusher_client_logins_total{database="app",user="postgres",application="wk"} 30'
    for _ in range(6):
        status, _, body = http_get(base + "/metrics")
        assert status == 200
        assert want in body, body[:2000]
    import json

    status, _, body = http_get(base + "/api/snapshot")
    snap = json.loads(body)
    assert snap["workers"] == WORKERS
    apps = {a["application"]: a for a in snap["applications"]}
    assert apps["wk"]["transactions"] >= 30


def test_supervisor_restarts_a_dead_worker(pooler: PoolerFactory) -> None:
    proc, _ = start_workers(pooler, pool_size=2)
    assert proc.pid is not None
    victim = children(proc.pid)[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while True:
        kids = children(proc.pid)
        if len(kids) == WORKERS and victim not in kids:
            break
        assert time.monotonic() < deadline, proc.log_text()[-2000:]
        time.sleep(0.1)
    assert "restarting it" in proc.log_text()
    wait_workers(proc, WORKERS)
    # What the dead worker held is free again: both servers can be used at once.
    conns = [psycopg.connect(proc.dsn("postgres")) for _ in range(6)]
    try:
        for conn in conns:
            conn.execute("select 1")
            conn.commit()
    finally:
        for conn in conns:
            conn.close()


def test_sigterm_and_shutdown_stop_every_worker(pooler: PoolerFactory) -> None:
    proc, _ = start_workers(pooler)
    assert proc.pid is not None
    kids = children(proc.pid)
    with console(proc) as admin, pytest.raises(psycopg.OperationalError):
        admin.execute("SHUTDOWN")
    assert proc.wait_exit(15) == 0
    for kid in kids:
        assert not os.path.exists(f"/proc/{kid}")  # the supervisor reaped every worker


def test_sighup_to_the_supervisor_reloads_every_worker(pooler: PoolerFactory) -> None:
    proc, _ = start_workers(pooler, pool_size=4)
    assert proc.pid is not None
    kids = children(proc.pid)
    with open(proc.ini_path) as fh:
        text = fh.read()
    with open(proc.ini_path, "w") as fh:
        fh.write(text.replace("default_pool_size = 4", "default_pool_size = 7"))
    os.kill(proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while True:
        reloaded = {int(m) for m in re.findall(r"UTC \[(\d+)\] LOG got SIGHUP", proc.log_text())}
        if set(kids) <= reloaded:
            break
        assert time.monotonic() < deadline, proc.log_text()[-2000:]
        time.sleep(0.1)
    for _ in range(4):  # whichever worker answers
        with console(proc) as admin:
            sizes = {r["name"]: r["pool_size"] for r in show(admin, "DATABASES")}
            assert sizes["app"] == 7
