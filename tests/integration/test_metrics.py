"""Who uses the database: per-application figures in the console, /metrics and the JSON."""

from __future__ import annotations

import json
import time
from typing import Any

import psycopg
from consolecase import console, http_get, show, start_with_http
from prometheus_client.parser import text_string_to_metric_families

from support import PgCluster, PoolerFactory


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def labels(app: str) -> tuple[tuple[str, str], ...]:
    return (("application", app), ("database", "app"), ("user", "postgres"))


def test_per_application_figures_match_what_they_ran(pg: PgCluster, pooler: PoolerFactory
                                                     ) -> None:
    proc, base = start_with_http(pooler, pool_size=4)
    dsn = proc.dsn("postgres")
    reporting = psycopg.connect(dsn + " application_name=reporting", autocommit=True)
    billing = [psycopg.connect(dsn + " application_name=billing", autocommit=True)
               for _ in range(2)]
    etl = [psycopg.connect(dsn + " application_name=etl", autocommit=True) for _ in range(3)]
    try:
        for _ in range(4):
            reporting.execute("select 1")
        for conn in billing:  # 3 + 3 transactions of BEGIN, 2 selects, COMMIT
            for _ in range(3):
                with conn.transaction():
                    conn.execute("select 1")
                    conn.execute("select 2")
        for i in range(10):
            etl[i % 3].execute("select pg_sleep(0.05)")
        with console(proc) as admin:
            apps = {r["application"]: r for r in show(admin, "APPLICATIONS")}
            assert apps["reporting"]["total_xact_count"] == 4
            assert apps["reporting"]["total_query_count"] == 4
            assert apps["billing"]["total_xact_count"] == 6
            assert apps["billing"]["total_query_count"] == 24
            assert apps["etl"]["total_xact_count"] == 10
            assert apps["etl"]["total_query_count"] == 10
            assert apps["etl"]["total_xact_time"] >= 500_000
            assert apps["etl"]["total_query_time"] >= 500_000
            assert (apps["reporting"]["cl_active"], apps["billing"]["cl_active"],
                    apps["etl"]["cl_active"]) == (1, 2, 3)
            assert apps["etl"]["cl_peak"] == 3
            # sorted by load: the application with the most transaction time first
            assert next(iter(apps)) == "etl"
            users = {r["user"]: r for r in show(admin, "USER_STATS")}
            assert users["postgres"]["total_xact_count"] == 20
            assert users["postgres"]["cl_active"] == 6
        status, ctype, text = http_get(base + "/metrics")
        assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
        got = samples(text)
        assert got[("pgusher_transactions_total", labels("billing"))] == 6
        assert got[("pgusher_queries_total", labels("billing"))] == 24
        assert got[("pgusher_transactions_total", labels("reporting"))] == 4
        assert got[("pgusher_client_connections", labels("etl"))] == 3
        assert got[("pgusher_transaction_seconds_total", labels("etl"))] >= 0.5
        assert got[("pgusher_received_bytes_total", labels("etl"))] > 0
        assert got[("pgusher_pool_size", (("database", "app"), ("user", "postgres")))] == 4
        assert ("pgusher_info", (("version", "0.1.0"),)) in got
        status, ctype, body = http_get(base + "/api/snapshot")
        snap = json.loads(body)
        by_app = {a["application"]: a for a in snap["applications"]}
        assert by_app["billing"]["transactions"] == 6 and by_app["etl"]["clients"] == 3
        assert snap["pools"][0]["database"] == "app"
        assert http_get(base + "/health")[:1] == (200,)
        status, _ctype, body = http_get(base + "/ready")
        assert status == 200 and json.loads(body)["ready"] is True
        assert http_get(base + "/nope")[0] == 404
    finally:
        for conn in [reporting, *billing, *etl]:
            conn.close()
    with console(proc) as admin:
        apps = {r["application"]: r for r in show(admin, "APPLICATIONS")}
        assert apps["etl"]["cl_active"] == 0 and apps["etl"]["cl_peak"] == 3


def test_ready_probes_servers_before_any_pool_exists(pg: PgCluster, pooler: PoolerFactory
                                                     ) -> None:
    _proc, base = start_with_http(pooler)
    status, _ctype, body = http_get(base + "/ready")
    assert status == 200, body
    pg.stop()
    try:
        status, _ctype, body = http_get(base + "/ready")
        assert status == 503 and json.loads(body)["ready"] is False
        assert http_get(base + "/health")[0] == 200
    finally:
        pg.ensure_running()


def test_log_stats_every_stats_period(pg: PgCluster, pooler: PoolerFactory) -> None:
    proc, _base = start_with_http(pooler, stats_period=1)
    with psycopg.connect(proc.dsn("postgres"), autocommit=True) as conn:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            conn.execute("select 1")
            time.sleep(0.01)
    time.sleep(1.2)
    lines = [line for line in proc.log_text().splitlines() if " LOG stats: " in line]
    assert lines
    assert any(" 0 xacts/s" not in line for line in lines)
    assert all("queries/s, 0 client parses/s, 0 server parses/s, 0 binds/s, in " in line
               and " B/s, out " in line and " us, query " in line and " us, wait " in line
               for line in lines)
    with console(proc) as admin:
        avgs: dict[str, Any] = {r["database"]: r for r in show(admin, "STATS_AVERAGES")}
        assert "app" in avgs
