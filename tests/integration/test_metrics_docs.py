"""docs/METRICS.md, the Grafana dashboard and the exporter-name rules against a real scrape.

Every family /metrics serves is documented, and every family the documents, the dashboard's
queries and the recording rules name is one /metrics serves. The queries are checked as
PromQL by promtool (wrapped as recording rules, Grafana's variables filled in).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest
from consolecase import http_get, start_with_http
from prometheus_client.parser import text_string_to_metric_families
from test_exporter_compat import CONFIG, LISTS, METRIC_MAPS
from test_metrics_failures import PROMTOOL

from support import PgCluster, PoolerFactory

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana-pgusher.json"
RULES = ROOT / "deploy" / "prometheus-pgbouncer-names.rules.yml"
DOC = ROOT / "docs" / "METRICS.md"
NAME = re.compile(r"\b((?:pgusher|process)_[a-z_]+)\b")
SUFFIXES = ("_bucket", "_count", "_sum")


def family_of(name: str, families: set[str]) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in families:
            return name[: -len(suffix)]
    return name


@pytest.fixture
def served(pg: PgCluster, pooler: PoolerFactory) -> tuple[set[str], set[str]]:
    """(families, sample names) of a scrape after some traffic."""
    proc, base = start_with_http(pooler)
    with psycopg.connect(proc.dsn("postgres", application_name="docs"), autocommit=True) as c:
        c.execute("select 1")
    status, _ctype, text = http_get(base + "/metrics")
    assert status == 200
    families = {f.name for f in text_string_to_metric_families(text)}
    # The parser names counter families without _total; the HELP lines have the full name.
    families |= {line.split(" ")[2] for line in text.splitlines() if line.startswith("# HELP ")}
    sample_names = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    return families, sample_names


def promql_valid(exprs: list[str], tmp_path: Path) -> None:
    assert PROMTOOL is not None
    lines = ["groups:", "  - name: check", "    rules:"]
    for i, expr in enumerate(exprs):
        lines += [f"      - record: check_{i}", f"        expr: {json.dumps(expr)}"]
    path = tmp_path / "check.rules.yml"
    path.write_text("\n".join(lines) + "\n")
    done = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def grafana_to_promql(expr: str) -> str:
    expr = expr.replace("$__rate_interval", "5m")
    return re.sub(r"\$\{?(\w+)\}?", ".*", expr)


def test_dashboard_queries_name_served_families(served: tuple[set[str], set[str]],
                                                tmp_path: Path) -> None:
    families, _samples = served
    dash: dict[str, Any] = json.loads(DASHBOARD.read_text())
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert len(panels) >= 20
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    # The grid is 24 wide; no two panels overlap.
    cells: set[tuple[int, int]] = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, p["title"]
        cells |= mine
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    variables = dash["templating"]["list"]
    for var in variables:
        if var["type"] == "query":
            inner = re.fullmatch(r"label_values\((.+), (\w+)\)", var["query"]["query"])
            assert inner is not None, var["name"]
            exprs.append(inner.group(1))
    promql_valid([grafana_to_promql(e) for e in exprs], tmp_path)
    named = {family_of(n, families) for e in exprs for n in NAME.findall(e)}
    assert named - families == set()
    # The figures the issue of a pooler is judged by are all on it.
    for wanted in ("pgusher_query_duration_seconds", "pgusher_client_auth_failures_total",
                   "pgusher_database_paused", "pgusher_database_disabled",
                   "process_resident_memory_bytes", "pgusher_pool_client_waiting_connections",
                   "pgusher_server_login_failures_total", "pgusher_query_wait_timeouts_total"):
        assert wanted in named
    assert {v["name"] for v in variables} >= {"datasource", "database", "application"}
    for p in panels:
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}"


def test_exporter_name_rules(served: tuple[set[str], set[str]]) -> None:
    families, _samples = served
    assert PROMTOOL is not None
    done = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    text = RULES.read_text()
    named = {family_of(n, families) for n in NAME.findall(text)}
    assert named and named - families == set()
    recorded = set(re.findall(r"record: (\w+)", text))
    doc = DOC.read_text()
    # Each recorded exporter name is in the mapping table of docs/METRICS.md.
    assert all(f"`{name}`" in doc for name in recorded)


def test_metrics_doc_covers_every_family(served: tuple[set[str], set[str]]) -> None:
    families, _samples = served
    doc = DOC.read_text()
    documented = {family_of(n, families) for n in NAME.findall(doc)}
    served_full = {f for f in families
                   if f.startswith(("pgusher_", "process_"))
                   and not any(f"{f}_total" == g for g in families)}
    assert served_full - documented == set()
    assert documented - families == set()
    # Every metric pgbouncer_exporter emits (its tables, as test_exporter_compat replays
    # them) has a row.
    exporter = {"pgbouncer_up", "pgbouncer_version_info"}
    exporter |= {f"pgbouncer_{v}" for v in [*LISTS.values(), *CONFIG.values()]}
    exporter |= {f"pgbouncer_{namespace}_{metric}" for namespace, columns in METRIC_MAPS.items()
                 for usage, metric, _factor in columns.values() if usage != "LABEL"}
    assert len(exporter) > 40
    assert {name for name in exporter if f"`{name}`" not in doc} == set()
