"""The sidecar examples in deploy/ hold configurations pgusher runs: each is started with
only what a test machine must change (the database's address, the port, TLS to a local
server, the file paths), serves a query through the fleet, and answers /ready."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import psycopg
import pytest

from support import PgCluster, PoolerFactory, free_port

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def kubernetes_ini() -> str:
    text = (DEPLOY / "kubernetes-sidecar.yaml").read_text()
    block = re.search(r"  pgusher\.ini: \|\n((?:    .*\n|\n)+)", text)
    assert block is not None
    return "\n".join(line[4:] for line in block.group(1).splitlines()) + "\n"


def ecs_ini() -> str:
    task = json.loads((DEPLOY / "ecs-task-definition.json").read_text())
    sidecar = next(c for c in task["containerDefinitions"] if c["name"] == "pgusher")
    env = {e["name"]: e["value"] for e in sidecar["environment"]}
    assert "$PGUSHER_INI" in sidecar["command"][0]
    return str(env["PGUSHER_INI"])


def localised(ini: str, pg: PgCluster, http_port: int) -> str:
    """The example's ini with what differs on a test machine replaced."""
    ini = re.sub(r"(?m)^(\w+ = )host=\S+ port=\d+", rf"\1host={pg.host} port={pg.port}", ini)
    ini = re.sub(r"dbname=\w+", "dbname=app", ini)
    ini = re.sub(r"(?m)^(\w+) = host", "app = host", ini)
    ini = re.sub(r"(?m)^listen_port = \d+", "listen_port = {listen_port}", ini)
    ini = re.sub(r"(?m)^server_tls_sslmode = .*", "server_tls_sslmode = disable", ini)
    ini = re.sub(r"(?m)^server_tls_ca_file = .*\n", "", ini)
    ini = re.sub(r"(?m)^auth_file = .*", "auth_file = {auth_file}\nlogfile = {logfile}", ini)
    ini = re.sub(r"(?m)^http_addr = .*", "http_addr = 127.0.0.1", ini)
    ini = re.sub(r"(?m)^http_port = \d+", f"http_port = {http_port}", ini)
    return ini + "fleet_table = pgusher_fleet_examples\n"


@pytest.mark.parametrize("source", [kubernetes_ini, ecs_ini])
def test_sidecar_example_serves_through_the_fleet(pg: PgCluster, pooler: PoolerFactory,
                                                  source: object) -> None:
    ini = source()  # type: ignore[operator]
    assert "fleet = orders-api" in ini and "server_tls_sslmode = verify-full" in ini
    http_port = free_port()
    proc = pooler(localised(ini, pg, http_port), {"scram_user": "scram_pass"})
    try:
        with psycopg.connect(proc.dsn("scram_user", "scram_pass"), autocommit=True) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/ready", timeout=5) as r:
            assert r.status == 200
        rows = pg.sql("select fleet, database from pgusher_fleet_examples", "app")
        assert rows.strip() == "orders-api|app"
    finally:
        pg.sql("drop table if exists pgusher_fleet_examples", "app")
