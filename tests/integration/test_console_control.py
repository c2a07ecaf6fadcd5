"""The console under real load: waiting clients, PAUSE/RESUME, RELOAD, KILL_CLIENT, SET."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from consolecase import console, pool_row, show, start_console

from support import PgCluster, PoolerFactory


def wait_for(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def run_clients(dsn: str, count: int, work: Callable[[psycopg.Connection[Any]], None]
                ) -> tuple[list[threading.Thread], list[BaseException]]:
    errors: list[BaseException] = []

    def one() -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                work(conn)
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for t in threads:
        t.start()
    return threads, errors


def test_waiting_clients_show_under_load(pg: PgCluster, pooler: PoolerFactory) -> None:
    """30 clients share 2 servers: SHOW POOLS sees clients waiting and both servers busy."""
    proc = start_console(pooler, pool_size=2, max_client_conn=100)

    def work(conn: psycopg.Connection[Any]) -> None:
        for _ in range(3):
            conn.execute("select pg_sleep(0.1)")

    with console(proc) as admin:
        threads, errors = run_clients(proc.dsn("postgres"), 30, work)
        seen: list[dict[str, Any]] = []

        def busy() -> bool:
            row = pool_row(admin)
            seen.append(row)
            return row["cl_waiting"] > 0 and row["sv_active"] == 2

        wait_for(busy)
        row = seen[-1]
        assert row["maxwait"] * 1_000_000 + row["maxwait_us"] > 0
        assert row["sv_active"] + row["sv_idle"] + row["sv_used"] + row["sv_login"] <= 2
        states = [r["state"] for r in show(admin, "CLIENTS") if r["database"] == "app"]
        assert "waiting" in states
        for t in threads:
            t.join()
        assert not errors
        stats = {r["database"]: r for r in show(admin, "STATS_TOTALS")}["app"]
        assert stats["xact_count"] == stats["query_count"] == 90
        assert stats["wait_time"] > 0 and stats["xact_time"] >= 90 * 100_000
        assert stats["server_assignment_count"] >= 90
        assert stats["bytes_received"] > 0 and stats["bytes_sent"] > 0
        assert pool_row(admin)["cl_waiting"] == 0


def test_pause_and_resume_with_clients_in_flight(pg: PgCluster, pooler: PoolerFactory) -> None:
    proc = start_console(pooler, pool_size=3)
    started = threading.Event()
    done_after_resume: list[float] = []

    def work(conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            conn.execute("select pg_sleep(0.6)")
            started.set()
        time.sleep(0.8)  # PAUSE is now pending or done
        conn.execute("select 1")  # waits until RESUME
        done_after_resume.append(time.monotonic())

    threads, errors = run_clients(proc.dsn("postgres"), 3, work)
    assert started.wait(10)
    with console(proc) as admin:
        t0 = time.monotonic()
        admin.execute("PAUSE")  # returns once every server is released and closed
        assert time.monotonic() - t0 < 5
        assert pg.connections(user="postgres", dbname="app") == 0
        assert {r["key"]: r["value"] for r in show(admin, "STATE")}["paused"] == "yes"
        with pytest.raises(psycopg.Error, match="already suspended/paused"):
            admin.execute("PAUSE")
        time.sleep(1.0)
        assert not done_after_resume  # clients queue while paused
        assert pool_row(admin)["cl_waiting"] == 3
        resumed = time.monotonic()
        admin.execute("RESUME")
        for t in threads:
            t.join(10)
        assert not errors
        assert len(done_after_resume) == 3 and min(done_after_resume) >= resumed
        with pytest.raises(psycopg.Error, match="pooler is not paused/suspended"):
            admin.execute("RESUME")


def test_signals_pause_and_resume(pg: PgCluster, pooler: PoolerFactory) -> None:
    proc = start_console(pooler)
    with psycopg.connect(proc.dsn("postgres"), autocommit=True) as client:
        client.execute("select 1")
        proc.signal(signal.SIGUSR1)
        with console(proc) as admin:
            wait_for(lambda: {r["key"]: r["value"] for r in show(admin, "STATE")}["paused"]
                     == "yes")
            wait_for(lambda: pg.connections(user="postgres", dbname="app") == 0)
            proc.signal(signal.SIGUSR2)
            wait_for(lambda: {r["key"]: r["value"] for r in show(admin, "STATE")}["active"]
                     == "yes")
        assert client.execute("select 2").fetchone() == (2,)
    log = proc.log_text()
    assert "got SIGUSR1, pausing all activity" in log and "got SIGUSR2, continuing" in log


def test_reload_applies_pool_size_without_dropping_clients(pg: PgCluster,
                                                           pooler: PoolerFactory) -> None:
    proc = start_console(pooler, pool_size=2)
    clients = [psycopg.connect(proc.dsn("postgres"), autocommit=True) for _ in range(6)]
    try:
        pids_before = [c.info.backend_pid for c in clients]
        assert all(pids_before)
        ini = Path(proc.ini_path)
        ini.write_text(ini.read_text().replace("default_pool_size = 2", "default_pool_size = 4"))
        with console(proc) as admin:
            admin.execute("RELOAD")
            assert {r["name"]: r for r in show(admin, "DATABASES")}["app"]["pool_size"] == 4
            barrier = threading.Barrier(6)

            def hold(conn: psycopg.Connection[Any]) -> None:
                barrier.wait()
                conn.execute("select pg_sleep(0.5)")

            threads = [threading.Thread(target=hold, args=(c,)) for c in clients]
            for t in threads:
                t.start()
            wait_for(lambda: pool_row(admin)["sv_active"] == 4)
            for t in threads:
                t.join()
            for c in clients:  # the same connections still work
                assert c.execute("select 1").fetchone() == (1,)
            ini.write_text(ini.read_text() + "\nbogus line without equals\n")
            with pytest.raises(psycopg.Error, match=r"RELOAD failed, see logs for additional "
                               r"details: .*bogus line") as info:
                admin.execute("RELOAD")
            assert info.value.sqlstate == "F0000"
    finally:
        for c in clients:
            c.close()


def test_kill_client_and_set(pg: PgCluster, pooler: PoolerFactory) -> None:
    proc = start_console(pooler)
    victim = psycopg.connect(proc.dsn("postgres", application_name="victim"), autocommit=True)
    other = psycopg.connect(proc.dsn("postgres", application_name="bystander"), autocommit=True)
    try:
        victim.execute("select 1")
        with console(proc) as admin:
            rows = show(admin, "CLIENTS")
            target = next(r for r in rows if r["application_name"] == "victim")
            admin.execute(f"KILL_CLIENT {target['id']}")
            with pytest.raises(psycopg.OperationalError):
                victim.execute("select 1")
            assert other.execute("select 2").fetchone() == (2,)
            with pytest.raises(psycopg.Error, match="client not found"):
                admin.execute(f"KILL_CLIENT {target['id']}")
            assert "admin forced disconnect" in proc.log_text()
            admin.execute("SET default_pool_size = 3")
            config = {r["key"]: r["value"] for r in show(admin, "CONFIG")}
            assert config["default_pool_size"] == "3"
            assert pool_row(admin) is not None
            assert {r["name"]: r for r in show(admin, "DATABASES")}["app"]["pool_size"] == 3
            with pytest.raises(psycopg.Error, match="SET failed"):
                admin.execute("SET listen_port = 1")
            with pytest.raises(psycopg.Error, match="SET failed"):
                admin.execute("SET no_such_key = 1")
            admin.execute("SET server_check_query = 'select 2'")
            assert {r["key"]: r["value"] for r in show(admin, "CONFIG")}[
                "server_check_query"] == "select 2"
            admin.execute("SET client_encoding = 'UTF8'")  # acknowledged and ignored
            admin.execute("DISABLE app")
            with pytest.raises(psycopg.OperationalError,
                               match="database does not allow connections: app"):
                psycopg.connect(proc.dsn("postgres"))
            assert {r["name"]: r for r in show(admin, "DATABASES")}["app"]["disabled"] == 1
            admin.execute("ENABLE app")
            psycopg.connect(proc.dsn("postgres")).close()
            admin.execute("RECONNECT app")
            admin.execute("WAIT_CLOSE app")
            admin.execute("KILL app")
            with pytest.raises(psycopg.OperationalError):
                other.execute("select 1")
            admin.execute("RESUME app")
            with psycopg.connect(proc.dsn("postgres"), autocommit=True) as again:
                assert again.execute("select 3").fetchone() == (3,)
    finally:
        victim.close()
        other.close()


def test_shutdown_wait_for_clients(pg: PgCluster, pooler: PoolerFactory) -> None:
    proc = start_console(pooler)
    client = psycopg.connect(proc.dsn("postgres"), autocommit=True)
    with console(proc) as admin:
        admin.execute("SHUTDOWN WAIT_FOR_CLIENTS")
    assert client.execute("select 1").fetchone() == (1,)
    assert proc.is_running()
    client.close()
    assert proc.wait_exit(10) == 0
