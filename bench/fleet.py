#!/usr/bin/env python3
"""Many sidecars against one small database, with and without a fleet budget.

    python bench/fleet.py [--instances 50] [--clients 50] [--db-limit 100] [--budget 90]
                          [--seconds 20] [--pool-size 20] [--no-chart] [--redraw JSON]

The autoscaled API of docs/FLEET.md shrunk to one machine: ``--instances`` pgusher processes,
each with its own pgbench of ``--clients`` clients (transaction mode, a transaction that
holds its server 5 ms), all against one database that allows ``--db-limit`` server
connections of the pooled role. Two runs, the same instances and load each time:

- ``no fleet``: every instance has ``default_pool_size = --pool-size`` and counts only its
  own servers, so together they ask for far more than the database allows: the logins
  past the limit are refused ("too many connections") and their clients fail;
- ``fleet``: the same, plus ``fleet = bench`` and ``fleet_max_db_connections = --budget``.

Each member of a fleet also keeps one coordination connection to the database, outside the
budget (docs/FLEET.md, Limits), so the database's limit is raised by one per instance in
*both* runs (``ALTER DATABASE ... CONNECTION LIMIT``, which the superuser sampling the server
is exempt from): with the fleet, the pools share ``--db-limit`` (the budget below it); the
run without a fleet has the same limit, all of it for its pools' servers.

Reported per run: tps (the pgbench runs added up), p50/p99 latency (from pgbench's
per-transaction logs, a sample of them; bench/latency.py), failed transactions and aborted
clients (and the clients of an instance whose pgbench could not even start, because the
login of its first client was refused), the peak of server connections the pools held
(pg_stat_activity sampled every 100 ms, the coordination connections left out by their last
query) and of all connections of the role, and the spread of the shares: per-instance tps
(min / median / max) and, with the fleet, the claims (demand, grant, live) in the table,
sampled every 500 ms and shown at the moment the most members had demand. Figures go to
bench/results/fleet.json, the chart to bench/results/fleet.png (matplotlib, the ``bench``
extra).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import latency
from targets import ROOT

from support import (
    TRUST_HBA,
    PgCluster,
    PoolerProc,
    find_bindir,
    parse_pgbench,
    raise_nofile_limit,
    start_pooler,
    tool_path,
)

ROLE = "bench"
DB = "app"
TABLE = "pgusher_fleet"
HOLD = 0.005  # seconds each transaction holds its server


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sections(pg: PgCluster, args: argparse.Namespace, fleet: bool) -> dict[str, dict[str, str]]:
    own = {"workers": "1"}
    if fleet:
        own.update(fleet="bench", fleet_max_db_connections=str(args.budget),
                   fleet_table=TABLE)
    return {"databases": {DB: f"host={pg.host} port={pg.port} dbname={DB} user={ROLE}"},
            "pgbouncer": {"pool_mode": "transaction", "auth_type": "trust",
                          "default_pool_size": str(args.pool_size),
                          "max_client_conn": str(args.clients + 50),
                          "server_login_retry": "1", "log_connections": "0",
                          "log_disconnections": "0"},
            "pgusher": own}


class Sampler(threading.Thread):
    """Server connections of the role every 100 ms; with a fleet, the claims every 500 ms."""

    def __init__(self, pg: PgCluster, fleet: bool) -> None:
        super().__init__(daemon=True)
        self.pg = pg
        self.fleet = fleet
        self.stop = threading.Event()
        self.peak_servers = 0
        self.peak_all = 0
        self.grants: list[list[list[int]]] = []  # [demand, granted, live] per member

    def run(self) -> None:
        count = (f"select count(*) filter (where query not like '%{TABLE}%'), count(*) "
                 f"from pg_stat_activity where usename = '{ROLE}' and datname = '{DB}'")
        last_claims = 0.0
        while not self.stop.is_set():
            servers, every = (int(x) for x in self.pg.sql(count, "postgres").split("|"))
            self.peak_servers = max(self.peak_servers, servers)
            self.peak_all = max(self.peak_all, every)
            if (self.fleet and time.monotonic() - last_claims > 0.5
                    and self.pg.sql(f"select to_regclass('{TABLE}') is not null", DB) == "t"):
                last_claims = time.monotonic()
                out = self.pg.sql(f"select demand, granted, live from {TABLE} "
                                  "order by granted, instance", DB)
                if out:
                    self.grants.append([[int(x) for x in row.split("|")]
                                        for row in out.splitlines()])
            time.sleep(0.1)


def start_instances(pg: PgCluster, args: argparse.Namespace, fleet: bool) -> list[PoolerProc]:
    procs = [start_pooler(sections(pg, args, fleet), {ROLE: ""}, wait=False, pg=pg)
             for _ in range(args.instances)]
    for proc in procs:
        proc.wait_port(120)
    return procs


def one_run(pg: PgCluster, args: argparse.Namespace, fleet: bool, script: str,
            logdir: Path) -> dict[str, Any]:
    name = "fleet" if fleet else "no fleet"
    pg.sql(f"drop table if exists {TABLE}", DB)
    log(f"{name}: starting {args.instances} pgusher processes")
    procs = start_instances(pg, args, fleet)
    sampler = Sampler(pg, fleet)
    runs: list[subprocess.Popen[str]] = []
    try:
        sampler.start()
        log(f"{name}: {args.instances} x pgbench -c {args.clients} for {args.seconds} s")
        for i, proc in enumerate(procs):
            runs.append(subprocess.Popen(
                [tool_path("pgbench"), "-n", "-f", script, "-c", str(args.clients), "-j", "1",
                 "-T", str(args.seconds), "-l", "--sampling-rate", "0.1",
                 f"--log-prefix={logdir / f'i{i}'}", "-h", proc.host, "-p", str(proc.port),
                 "-U", ROLE, DB],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=logdir))
        results = []
        for r in runs:
            out, err = r.communicate(timeout=args.seconds + 300)
            results.append(parse_pgbench(out, err))
            if results[-1].tps is None:
                log(f"{name}: pgbench printed no result: {err.strip().splitlines()[0]}")
    finally:
        sampler.stop.set()
        sampler.join(10)
        for r in runs:
            if r.poll() is None:
                r.kill()
        for proc in procs:
            proc.stop(10)
            proc.cleanup()
    lat = latency.from_logs(logdir)
    refused = args.clients * sum(1 for r in results if r.tps is None)
    per_instance = sorted(r.tps or 0.0 for r in results)
    # The pgbench runs start and end at different times (their clients log in through busy
    # poolers): the claims are shown at the moment the most members had demand.
    loaded = max(sampler.grants, key=lambda rows: (sum(1 for r in rows if r[0] > 0),
                                                   sum(r[0] for r in rows)), default=[])
    out = {
        "name": name, "instances": args.instances, "clients_per_instance": args.clients,
        "tps": round(sum(per_instance), 1),
        "p50_ms": lat.p50_ms, "p99_ms": lat.p99_ms, "latency_samples": lat.samples,
        "transactions": sum(r.transactions or 0 for r in results),
        "failed_transactions": sum(r.failed for r in results),
        "aborted_clients": sum(r.aborted_clients for r in results),
        "instances_with_failures": sum(1 for r in results if not r.ok),
        # pgbench stops before its run when a client cannot log in: all its clients failed.
        "instances_not_served": sum(1 for r in results if r.tps is None),
        "clients_refused": refused,
        "failed_clients": refused + sum(r.aborted_clients for r in results),
        "peak_server_connections": sampler.peak_servers,
        "peak_role_connections": sampler.peak_all,
        "instance_tps": [round(t, 1) for t in per_instance],
        "instance_tps_min_median_max": [round(per_instance[0], 1),
                                        round(statistics.median(per_instance), 1),
                                        round(per_instance[-1], 1)],
        "claims_under_load": loaded,  # [demand, granted, live] per member
        "members_with_demand_under_load": sum(1 for r in loaded if r[0] > 0),
        "grant_min_max_under_load": [loaded[0][1], loaded[-1][1]] if loaded else [],
        "claim_samples": [[sum(1 for r in rows if r[0] > 0), min(r[1] for r in rows),
                           max(r[1] for r in rows)] for rows in sampler.grants],
    }
    brief = {k: v for k, v in out.items() if k not in ("instance_tps", "claim_samples")}
    log(f"{name}: {json.dumps(brief)}")
    return out


def draw(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    names = [r["name"] for r in runs]
    colours = ["#ff7f0e" if r["name"] == "no fleet" else "#1f77b4" for r in runs]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    panels = [("tps", "transactions per second"), ("p99_ms", "p99 latency (ms)"),
              ("failed_clients", "clients failed (refused at login or aborted)"),
              ("peak_server_connections", "peak server connections of the pools")]
    for ax, (key, label) in zip(axes.flat, panels, strict=False):
        values = [r[key] or 0 for r in runs]
        ax.bar(names, values, color=colours)
        ax.set_title(label)
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:.0f}", ha="center", va="bottom")
        if key == "peak_server_connections":
            ax.axhline(result["database_connection_limit"], color="#d1242f", linestyle="--",
                       label=f"database CONNECTION LIMIT ({result['db_limit']} + 1 per "
                             "instance)")
            ax.axhline(result["budget"], color="#1f77b4", linestyle=":",
                       label=f"fleet budget ({result['budget']})")
            ax.legend(loc="lower right", fontsize=8)
    ax = axes.flat[4]
    for r, c in zip(runs, colours, strict=True):
        ax.plot(range(len(r["instance_tps"])), r["instance_tps"], color=c, label=r["name"])
    ax.set_title("tps per instance (sorted)")
    ax.legend(fontsize=8)
    ax = axes.flat[5]
    grants = [r for r in runs if r["claims_under_load"]]
    if grants:
        g = [row[1] for row in grants[0]["claims_under_load"]]
        ax.bar(range(len(g)), g, color="#1f77b4")
        ax.set_title("fleet: grants in the table (sorted)\n"
                     "at the sample where most members had demand", fontsize=10)
    else:
        ax.axis("off")
    fig.suptitle(f"{result['instances']} pgusher instances x {result['clients']} clients, "
                 f"database limit {result['db_limit']} (+1 per instance), fleet budget "
                 f"{result['budget']}; {result['seconds']} s runs, {result['date']}, "
                 f"{os.cpu_count()} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1] if __doc__ else None)
    p.add_argument("--instances", type=int, default=50)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--db-limit", type=int, default=100)
    p.add_argument("--budget", type=int, default=90)
    p.add_argument("--pool-size", type=int, default=20)
    p.add_argument("--seconds", type=int, default=20)
    p.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "fleet.json")
    p.add_argument("--no-chart", dest="chart", action="store_false")
    p.add_argument("--redraw", type=Path, metavar="JSON",
                   help="only draw the chart again from a results file")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.redraw:
        draw(json.loads(args.redraw.read_text()), args.redraw.with_suffix(".png"))
        return 0
    raise_nofile_limit()
    if find_bindir() is None:
        log("PostgreSQL server binaries not found (install postgresql-15 or set PG_BINDIR)")
        return 2
    limit = args.db_limit + args.instances  # + one coordination connection per member
    pg = PgCluster(hba=TRUST_HBA, settings={"max_connections": str(limit + 20)})
    load_at_start = list(os.getloadavg())
    try:
        pg.start()
        pg.sql(f"CREATE ROLE {ROLE} LOGIN", "postgres")
        pg.create_database(DB)
        pg.sql(f"ALTER DATABASE {DB} CONNECTION LIMIT {limit}; "
               f"GRANT CREATE ON DATABASE {DB} TO {ROLE}", "postgres")
        pg.sql(f"GRANT CREATE ON SCHEMA public TO {ROLE}", DB)
        with tempfile.TemporaryDirectory() as tmp:
            script = Path(tmp) / "hold.sql"
            script.write_text(f"SELECT pg_sleep({HOLD});\n")
            os.chmod(tmp, 0o755)
            runs = []
            for fleet in (False, True):
                logdir = Path(tmp) / ("fleet" if fleet else "nofleet")
                logdir.mkdir()
                runs.append(one_run(pg, args, fleet, str(script), logdir))
    finally:
        pg.destroy()
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "instances": args.instances, "clients": args.clients,
              "db_limit": args.db_limit, "database_connection_limit": limit,
              "budget": args.budget, "pool_size": args.pool_size, "seconds": args.seconds,
              "hold_seconds": HOLD, "cores": os.cpu_count(), "load_at_start": load_at_start,
              "runs": runs}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    log(f"results written to {args.output}")
    if args.chart:
        png = args.output.with_suffix(".png")
        draw(result, png)
        log(f"chart written to {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
