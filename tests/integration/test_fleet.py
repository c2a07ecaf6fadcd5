"""A fleet of pgusher processes shares one budget of server connections per database.

Overshoot cannot pass unseen: the role every member logs in as has a CONNECTION LIMIT of the
budget plus one coordination connection per member, so one server connection too many is
refused by PostgreSQL itself and shows as a failed server login. Shares are read from the
claims table the members keep."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from support import PgCluster, PoolerFactory, PoolerProc, tool_path

ROLE = "fleet_user"
PASSWORD = "fleet_pass"
TABLE = "pgusher_fleet_test"


@pytest.fixture
def fleet_role(pg: PgCluster) -> Iterator[None]:
    pg.sql(f"""
        do $$ begin
          if not exists (select 1 from pg_roles where rolname = '{ROLE}') then
            create role {ROLE} login password '{PASSWORD}';
          end if;
        end $$;
        grant connect on database app to {ROLE};
    """, "postgres")
    pg.sql(f"grant create on schema public to {ROLE}; drop table if exists {TABLE}", "app")
    yield
    pg.sql(f"drop table if exists {TABLE}", "app")


def members(pooler: PoolerFactory, count: int, budget: int, **extra: str) -> list[PoolerProc]:
    procs = []
    for _ in range(count):
        procs.append(pooler({
            "databases": pooler.databases(),
            "pgbouncer": {"pool_mode": "transaction", "default_pool_size": "20",
                          "auth_type": "trust", "server_login_retry": "1",
                          "admin_users": ROLE},
            "pgusher": {"fleet": "test", "fleet_max_db_connections": str(budget),
                        "fleet_check_interval": "0.2", "fleet_lease_timeout": "2",
                        "fleet_table": TABLE, **extra},
        }, {ROLE: PASSWORD}))
    return procs


def claims(pg: PgCluster) -> list[tuple[str, int, int, int]]:
    out = pg.sql(f"select instance, demand, granted, live from {TABLE} order by instance",
                 "app")
    rows = []
    for line in out.splitlines():
        instance, demand, granted, live = line.split("|")
        rows.append((instance, int(demand), int(granted), int(live)))
    return rows


def load(proc: PoolerProc, clients: int, seconds: int, script: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [tool_path("pgbench"), "-n", "-f", script, "-c", str(clients), "-j", "1",
         "-T", str(seconds), "-h", proc.host, "-p", str(proc.port), "-U", ROLE, "app"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PGPASSWORD": PASSWORD})


@pytest.fixture
def script() -> Iterator[str]:
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write("SELECT pg_sleep(0.01);\n")
    os.chmod(f.name, 0o644)
    yield f.name
    os.unlink(f.name)


def test_ten_members_never_exceed_the_budget(pg: PgCluster, pooler: PoolerFactory,
                                             fleet_role: None, script: str) -> None:
    budget, count = 20, 10
    pg.sql(f"alter role {ROLE} connection limit {budget + count}", "postgres")
    try:
        procs = members(pooler, count, budget)
        runs = [load(proc, 6, 6, script) for proc in procs]
        peak = [0]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], sum(g for _, _, g, _ in claims(pg)))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()
        time.sleep(3)
        under_load = claims(pg)
        outputs = [run.communicate(timeout=120) for run in runs]
        stop.set()
        sampler.join()
        for run, (out, err) in zip(runs, outputs, strict=True):
            assert run.returncode == 0, err
            assert "number of failed transactions: 0" in out, out
        for proc in procs:
            log = proc.log_text()
            assert "too many connections" not in log
            assert "server login failed" not in log
        assert len(under_load) == count
        assert peak[0] <= budget
        # Under equal load every member has its equal part.
        assert all(granted == budget // count for _, _, granted, _ in under_load), under_load
    finally:
        pg.sql(f"alter role {ROLE} connection limit -1", "postgres")


def test_shares_follow_demand_and_a_killed_member_stops_counting(
        pg: PgCluster, pooler: PoolerFactory, fleet_role: None, script: str) -> None:
    budget = 12
    busy, idle, doomed = members(pooler, 3, budget, fleet_min_share="1")
    for member in (idle, doomed):  # each serves a client once: a member from then on
        out, err = load(member, 1, 1, script).communicate(timeout=60)
        assert "number of failed transactions: 0" in out, err
    first = load(busy, 10, 4, script)
    # The busy member gets all but the idle members' floors (once a check finds all its
    # clients at work or waiting: one between transactions counts for less).
    wait_for("the busy member's grant", lambda: grants_by_port(pg).get(
        str(busy.port)) == budget - 2, 3)
    out, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    both = [load(busy, 10, 9, script), load(idle, 10, 9, script)]
    # The idle member's floor aside, the two loaded members share equally (the odd one
    # server to the first by name).
    even = [(budget - 1) // 2, (budget - 1) - (budget - 1) // 2]
    wait_for("the two loaded members' equal parts", lambda: sorted(
        [grants_by_port(pg).get(str(p.port), 0) for p in (busy, idle)]) == even, 5)
    doomed_pid = doomed.pid
    assert doomed_pid is not None
    os.kill(doomed_pid, signal.SIGKILL)
    # Its lease (2 s) runs out and the others take its floor, within 5 s of the kill.
    wait_for("the killed member's floor taken", lambda: str(doomed.port) not in (
        grants := grants_by_port(pg)) and sum(grants.values()) == budget, 5)
    # SHOW FLEET on a member: itself and the other live member, each with its grant.
    names: list[str] = []
    shown: list[dict[str, object]] = []

    def show_fleet() -> bool:
        with psycopg.connect(busy.dsn(ROLE, PASSWORD, dbname="pgbouncer"),
                             autocommit=True) as con:
            cur = con.execute("SHOW FLEET")
            assert cur.description is not None
            names[:] = [d.name for d in cur.description]
            shown[:] = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        return sum(int(str(r["granted"])) for r in shown) == budget

    wait_for("SHOW FLEET: the grants add up to the budget", show_fleet, 3)
    assert names == ["database", "instance", "demand", "share", "granted", "live",
                     "heartbeat_age", "budget"]
    assert sorted(str(r["instance"]).split(":")[1] for r in shown) == sorted(
        [str(busy.port), str(idle.port)])
    assert all(r["database"] == "app" and int(str(r["budget"])) == budget for r in shown)
    for run in both:
        _out, err = run.communicate(timeout=60)
        assert run.returncode == 0, err


def grants_by_port(pg: PgCluster) -> dict[str, int]:
    if pg.sql(f"select to_regclass('{TABLE}') is null", "app") == "t":
        return {}  # no member has made the table yet
    return {inst.split(":")[1]: granted for inst, _d, granted, _l in claims(pg)}


def wait_for(what: str, ok: object, timeout: float) -> float:
    """Seconds until ``ok()`` is true; fails the test after ``timeout``."""
    assert callable(ok)
    start = time.monotonic()
    while not ok():
        assert time.monotonic() - start < timeout, f"{what}: not within {timeout} s"
        time.sleep(0.05)
    return time.monotonic() - start


def test_a_new_member_gets_its_share_within_5_seconds(
        pg: PgCluster, pooler: PoolerFactory, fleet_role: None, script: str) -> None:
    budget = 12
    pg.sql(f"alter role {ROLE} connection limit {budget + 3}", "postgres")
    try:
        first = members(pooler, 2, budget, fleet_min_share="1")
        runs = [load(proc, 10, 12, script) for proc in first]
        wait_for("two busy members share the budget", lambda: sorted(
            grants_by_port(pg).values()) == [budget // 2, budget // 2], 10)
        (late,) = members(pooler, 1, budget, fleet_min_share="1")
        started = time.monotonic()
        runs.append(load(late, 10, 8, script))
        took = wait_for("the newcomer's equal part", lambda: grants_by_port(pg).get(
            str(late.port)) == budget // 3, 5)
        print(f"new member at its share of {budget // 3} after {took:.2f} s "
              f"({time.monotonic() - started:.2f} s after its load started)")
        assert sorted(grants_by_port(pg).values()) == [budget // 3] * 3
        # Each change of a grant is logged, with the share and the demand behind it.
        assert re.search(rf"fleet test: database app: grant \d+ -> {budget // 3} "
                         rf"\(share {budget // 3}, demand \d+, 2 other members\)",
                         late.log_text())
        for run in runs:
            out, err = run.communicate(timeout=60)
            assert run.returncode == 0, err
            assert "number of failed transactions: 0" in out, out
        for proc in [*first, late]:
            assert "server login failed" not in proc.log_text()
    finally:
        pg.sql(f"alter role {ROLE} connection limit -1", "postgres")


def test_the_database_restarting_mid_run_recovers(
        pg: PgCluster, pooler: PoolerFactory, fleet_role: None, script: str) -> None:
    budget, count = 12, 3
    procs = members(pooler, count, budget)
    before = [load(proc, 8, 4, script) for proc in procs]
    time.sleep(2)
    pg.restart("fast")  # every connection ends, the claims table survives
    for run in before:
        run.communicate(timeout=60)  # those in flight fail: the server went away
    # No one does anything: the members reconnect, rewrite their rows and serve the next
    # load, which starts as soon as the server accepts connections again.
    pg.sql(f"alter role {ROLE} connection limit {budget + count}", "postgres")
    try:
        after = [load(proc, 8, 6, script) for proc in procs]
        took = wait_for("every member back in the table with an equal part", lambda: sorted(
            grants_by_port(pg).values()) == [budget // count] * count, 10)
        print(f"equal parts again {took:.2f} s after the restart")
        for run in after:
            out, err = run.communicate(timeout=60)
            assert run.returncode == 0, err
            assert "number of failed transactions: 0" in out, out
        assert sum(grants_by_port(pg).values()) <= budget
        for proc in procs:
            assert proc.is_running()
            assert "too many connections" not in proc.log_text()
    finally:
        pg.sql(f"alter role {ROLE} connection limit -1", "postgres")
