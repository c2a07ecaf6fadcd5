"""The fleet on /metrics and in the dashboard's snapshot: this member's demand, share, grant
and live servers per database, and the members it last read; with several workers, each
worker is a member and the page adds them up. Checked against a real scrape, by promtool
too."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest
from consolecase import http_get
from poolcase import USERLIST
from prometheus_client.parser import text_string_to_metric_families
from test_metrics_failures import PROMTOOL
from test_workers import wait_workers

from support import PgCluster, PoolerFactory, PoolerProc, free_port, tool_path

TABLE = "pgusher_fleet_metrics"
BUDGET = 10


@pytest.fixture
def table(pg: PgCluster) -> Iterator[None]:
    pg.sql(f"drop table if exists {TABLE}", "app")
    yield
    pg.sql(f"drop table if exists {TABLE}", "app")


@pytest.fixture
def script() -> Iterator[str]:
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write("SELECT pg_sleep(0.02);\n")
    os.chmod(f.name, 0o644)
    yield f.name
    os.unlink(f.name)


def member(pooler: PoolerFactory, http: bool = False, workers: str = "1") -> tuple[
        PoolerProc, str]:
    port = free_port()
    extra = {"http_port": str(port), "http_addr": "127.0.0.1"} if http else {}
    proc = pooler({"databases": pooler.databases(),
                   "pgbouncer": {"pool_mode": "transaction", "default_pool_size": "20",
                                 "auth_type": "trust", "server_login_retry": "1",
                                 "admin_users": "postgres"},
                   "pgusher": {"fleet": "metrics", "fleet_max_db_connections": str(BUDGET),
                               "fleet_check_interval": "0.2", "fleet_lease_timeout": "2",
                               "fleet_table": TABLE, "workers": workers, **extra}}, USERLIST)
    if workers != "1":
        wait_workers(proc, int(workers))
    return proc, f"http://127.0.0.1:{port}"


def load(proc: PoolerProc, seconds: int, script: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [tool_path("pgbench"), "-n", "-f", script, "-c", "12", "-j", "1", "-T", str(seconds),
         "-h", proc.host, "-p", str(proc.port), "-U", "postgres", "app"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def fleet_samples(text: str) -> dict[str, float]:
    """The fleet's gauges for database app, by family."""
    out = {}
    for fam in text_string_to_metric_families(text):
        if fam.name.startswith("pgusher_fleet_"):
            for s in fam.samples:
                assert s.labels == {"database": "app"}, s
                out[s.name] = s.value
    return out


def promtool_clean(text: str) -> None:
    assert PROMTOOL is not None, "promtool is missing (scripts/setup installs prometheus)"
    done = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), (
        done.stdout + done.stderr)


def scrape_until(base: str, ok: object, timeout: float = 10) -> tuple[str, dict[str, float]]:
    assert callable(ok)
    deadline = time.monotonic() + timeout
    while True:
        status, _ctype, text = http_get(base + "/metrics")
        assert status == 200
        found = fleet_samples(text)
        if ok(found):
            return text, found
        assert time.monotonic() < deadline, found
        time.sleep(0.1)


def snapshot_until(base: str, ok: object, timeout: float = 5) -> list[dict[str, object]]:
    """The snapshot's fleet rows once ``ok(rows)``: a demand read between two transactions
    may leave a share unused for a check or two."""
    assert callable(ok)
    deadline = time.monotonic() + timeout
    while True:
        status, _ctype, body = http_get(base + "/api/snapshot")
        assert status == 200
        rows: list[dict[str, object]] = json.loads(body)["fleet"]
        if ok(rows):
            return rows
        assert time.monotonic() < deadline, rows
        time.sleep(0.1)


def finish(runs: list[subprocess.Popen[str]]) -> None:
    for run in runs:
        out, err = run.communicate(timeout=60)
        assert run.returncode == 0, err
        assert "number of failed transactions: 0" in out, out


def test_a_members_metrics_and_snapshot(pg: PgCluster, pooler: PoolerFactory, table: None,
                                        script: str) -> None:
    a, base = member(pooler, http=True)
    b, _ = member(pooler)
    runs = [load(a, 5, script), load(b, 5, script)]
    text, found = scrape_until(base, lambda f: f.get("pgusher_fleet_members") == 2
                               and f.get("pgusher_fleet_grant_connections") == BUDGET // 2
                               and f.get("pgusher_fleet_granted_connections") == BUDGET)
    promtool_clean(text)
    assert found["pgusher_fleet_budget_connections"] == BUDGET
    assert found["pgusher_fleet_share_connections"] == BUDGET // 2
    assert found["pgusher_fleet_demand_connections"] > BUDGET // 2  # 12 clients want more
    assert 0 < found["pgusher_fleet_live_connections"] <= BUDGET // 2
    assert 0 <= found["pgusher_fleet_heartbeat_age_seconds"] < 2
    rows = snapshot_until(base, lambda rows: [r["granted"] for r in rows] == [
        BUDGET // 2, BUDGET // 2])
    assert [(r["self"], str(r["instance"]).split(":")[1]) for r in rows] == [
        (True, str(a.port)), (False, str(b.port))]
    assert all(r["database"] == "app" and r["budget"] == BUDGET for r in rows)
    status, _ctype, page = http_get(base + "/")
    assert status == 200 and 'id="fleet-panel"' in page
    finish(runs)


def test_workers_are_members_and_the_page_adds_them_up(
        pg: PgCluster, pooler: PoolerFactory, table: None, script: str) -> None:
    proc, base = member(pooler, http=True, workers="2")
    runs = [load(proc, 5, script)]
    # Both workers take part (12 clients spread over them); the budget is theirs alone.
    text, found = scrape_until(base, lambda f: f.get("pgusher_fleet_members") == 2
                               and f.get("pgusher_fleet_grant_connections") == BUDGET)
    promtool_clean(text)
    assert found["pgusher_fleet_budget_connections"] == BUDGET  # the largest, not the sum
    assert found["pgusher_fleet_granted_connections"] == BUDGET
    assert found["pgusher_fleet_live_connections"] <= BUDGET
    # Each worker once, from its own snapshot.
    rows = snapshot_until(base, lambda rows: sum(int(str(r["granted"])) for r in rows)
                          == BUDGET)
    assert len(rows) == 2 and all(r["self"] for r in rows), rows
    assert len({r["instance"] for r in rows}) == 2
    finish(runs)


def test_no_fleet_no_fleet_samples(pg: PgCluster, pooler: PoolerFactory) -> None:
    port = free_port()
    proc = pooler({"databases": pooler.databases(),
                   "pgbouncer": {"auth_type": "trust"},
                   "pgusher": {"http_port": str(port), "http_addr": "127.0.0.1"}}, USERLIST)
    assert proc.is_running()
    status, _ctype, text = http_get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    assert fleet_samples(text) == {}
    assert "# TYPE pgusher_fleet_grant_connections gauge" in text
    assert json.loads(http_get(f"http://127.0.0.1:{port}/api/snapshot")[2])["fleet"] == []
