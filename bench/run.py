#!/usr/bin/env python3
"""Throughput comparison: PostgreSQL directly vs pgusher vs PgBouncer, with pgbench.

    python bench/run.py [--rounds 3] [--duration 15] [--quick]
                        [--targets direct,pgusher,pgbouncer] [--scenarios NAME,...|all]

A private PostgreSQL cluster is created (trust auth on loopback) and filled with
``pgbench -i -s SCALE``; pgusher and PgBouncer are started with the same
configuration (transaction pooling, default_pool_size 20, max_client_conn 3000,
auth_type trust).  Every scenario runs against every target in interleaved
rounds (round 1: direct, pgusher, pgbouncer; round 2: ...), so slow drifts of
the machine affect all targets alike.  A table of medians goes to stdout, all
figures to bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support import (  # noqa: E402
    TRUST_HBA,
    PgCluster,
    PoolerProc,
    find_bindir,
    parse_pgbench,
    raise_nofile_limit,
    run_pgbench,
    start_pooler,
    tool_path,
)

ALL_TARGETS = ("direct", "pgusher", "pgbouncer")
POOLERS = ("pgusher", "pgbouncer")
DBNAME = "app"
USER = "postgres"


@dataclass(frozen=True)
class Scenario:
    """One pgbench workload.  ``args`` exclude -T, -M and the connection options."""

    name: str
    description: str
    args: tuple[str, ...]
    mode: str = "simple"  # pgbench -M: simple | extended | prepared
    targets: tuple[str, ...] = ALL_TARGETS
    default: bool = True  # part of the run when --scenarios is not given


# To add a workload, add a row.  Non-default rows run with --scenarios NAME or all.
SCENARIOS: tuple[Scenario, ...] = (
    Scenario("select-c50", "select-only, 50 clients", ("-S", "-c", "50", "-j", "2")),
    Scenario(
        "connect-select-c10",
        "select-only, new connection per transaction, 10 clients",
        ("-C", "-S", "-c", "10", "-j", "2"),
    ),
    Scenario(
        "select-extended-c50",
        "select-only, extended protocol, 50 clients",
        ("-S", "-c", "50", "-j", "2"),
        mode="extended",
    ),
    Scenario(
        "select-prepared-c50",
        "select-only, named prepared statements, 50 clients "
        "(needs prepared statement tracking in transaction mode)",
        ("-S", "-c", "50", "-j", "2"),
        mode="prepared",
    ),
    Scenario(
        "tpcb-c50", "TPC-B-like default script, 50 clients", ("-c", "50", "-j", "2"), default=False
    ),
    Scenario(
        "select-c2500",
        "select-only, 2500 clients (more than max_connections: poolers only)",
        ("-S", "-c", "2500", "-j", "2"),
        targets=POOLERS,
        default=False,
    ),
)


@dataclass
class Run:
    round: int
    rc: int
    tps: float | None
    latency_avg_ms: float | None
    transactions: int | None
    failed: int
    aborted_clients: int
    connection_time_ms: float | None
    seconds: float
    error: str | None = None


@dataclass
class Cell:
    runs: list[Run] = field(default_factory=list)

    def _good(self) -> list[Run]:
        return [r for r in self.runs if r.tps is not None]

    @property
    def median_tps(self) -> float | None:
        good = self._good()
        return statistics.median(r.tps for r in good if r.tps is not None) if good else None

    @property
    def median_latency_ms(self) -> float | None:
        lats = [r.latency_avg_ms for r in self._good() if r.latency_avg_ms is not None]
        return statistics.median(lats) if lats else None

    @property
    def failed(self) -> int:
        return sum(r.failed for r in self.runs)

    @property
    def errors(self) -> int:
        return sum(1 for r in self.runs if r.rc != 0 or r.tps is None or r.aborted_clients)

    def summary(self) -> dict[str, Any]:
        return {
            "median_tps": self.median_tps,
            "median_latency_ms": self.median_latency_ms,
            "failed_transactions": self.failed,
            "runs_with_errors": self.errors,
            "runs": [asdict(r) for r in self.runs],
        }


# --------------------------------------------------------------------------- setup


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def first_line(cmd: Sequence[str]) -> str | None:
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else None


def pooler_sections(pg: PgCluster, max_client_conn: int = 3000) -> dict[str, dict[str, str]]:
    """The configuration both poolers get: the same for pgusher and PgBouncer."""
    return {
        "databases": {DBNAME: f"host={pg.host} port={pg.port} dbname={DBNAME}"},
        "pgbouncer": {
            "pool_mode": "transaction",
            "default_pool_size": "20",
            "max_client_conn": str(max_client_conn),
            "auth_type": "trust",
        },
    }


def start_target(name: str, pg: PgCluster, args: argparse.Namespace,
                 max_client_conn: int = 3000) -> PoolerProc:
    cmd = shlex.split(args.pgusher_cmd) if name == "pgusher" else [args.pgbouncer]
    return start_pooler(pooler_sections(pg, max_client_conn), {USER: ""}, cmd=cmd, pg=pg,
                        timeout=20)


def add_target_args(p: argparse.ArgumentParser) -> None:
    """The options naming the pooler commands, shared by the bench scripts."""
    p.add_argument(
        "--pgusher-cmd",
        default=shlex.join([sys.executable, "-m", "pgusher"]),
        help="command starting pgusher (the ini path is appended)",
    )
    p.add_argument("--pgbouncer", default="/usr/sbin/pgbouncer")


def pgbench_conn(host: str, port: int) -> list[str]:
    return ["-h", host, "-p", str(port), "-U", USER, DBNAME]


def run_one(
    scenario: Scenario, host: str, port: int, duration: int, rnd: int
) -> tuple[Run, str, str]:
    argv = ["-n", "-M", scenario.mode, *scenario.args, "-T", str(duration)]
    argv += pgbench_conn(host, port)
    started = time.monotonic()
    try:
        rc, out, err = run_pgbench(argv, timeout=duration * 2 + 60)
    except subprocess.TimeoutExpired:
        rc, out, err = -1, "", "pgbench timed out"
    seconds = time.monotonic() - started
    res = parse_pgbench(out, err)
    error = None
    if rc != 0 or res.tps is None or res.aborted_clients:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        error = "\n".join(lines[-5:]) or f"pgbench exit code {rc}"
    run = Run(
        round=rnd,
        rc=rc,
        tps=res.tps,
        latency_avg_ms=res.latency_avg_ms,
        transactions=res.transactions,
        failed=res.failed,
        aborted_clients=res.aborted_clients,
        connection_time_ms=res.connection_time_ms,
        seconds=round(seconds, 2),
        error=error,
    )
    return run, out, err


# --------------------------------------------------------------------------- report


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def report(
    scenarios: Sequence[Scenario], cells: dict[tuple[str, str], Cell], targets: Sequence[str]
) -> tuple[str, list[dict[str, Any]]]:
    header = (
        "scenario", "target", "median tps", "avg lat ms", "failed", "err runs",
        "vs pgbouncer", "vs direct",
    )  # fmt: skip
    rows: list[tuple[str, ...]] = []
    data: list[dict[str, Any]] = []
    for sc in scenarios:
        tgt = [t for t in targets if t in sc.targets]
        direct = cells.get((sc.name, "direct"))
        bouncer = cells.get((sc.name, "pgbouncer"))
        direct_tps = direct.median_tps if direct else None
        bouncer_tps = bouncer.median_tps if bouncer else None
        entry: dict[str, Any] = {
            "name": sc.name,
            "description": sc.description,
            "pgbench_args": ["-n", "-M", sc.mode, *sc.args],
            "targets": {},
            "ratios": {},
        }
        for t in tgt:
            cell = cells.get((sc.name, t))
            if cell is None:
                continue
            tps = cell.median_tps
            vs_bouncer = ratio(tps, bouncer_tps) if t == "pgusher" else None
            vs_direct = ratio(tps, direct_tps) if t != "direct" else None
            rows.append(
                (
                    sc.name, t, fmt(tps), fmt(cell.median_latency_ms, 3), str(cell.failed),
                    str(cell.errors), fmt(vs_bouncer, 2), fmt(vs_direct, 2),
                )
            )  # fmt: skip
            entry["targets"][t] = cell.summary()
            if vs_bouncer is not None:
                entry["ratios"]["pgusher/pgbouncer"] = vs_bouncer
            if vs_direct is not None:
                entry["ratios"][f"{t}/direct"] = vs_direct
        data.append(entry)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for n, r in enumerate([header, *rows]):
        cols = [r[i].ljust(widths[i]) if i < 2 else r[i].rjust(widths[i]) for i in range(len(r))]
        lines.append("  ".join(cols).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines), data


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    names = ", ".join(f"{s.name}{'' if s.default else '*'}" for s in SCENARIOS)
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog=f"scenarios (* = not run by default): {names}",
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=15, help="seconds per pgbench run")
    p.add_argument("--quick", action="store_true", help="1 round of 5 s, short warm-up")
    p.add_argument("--targets", default=",".join(ALL_TARGETS))
    p.add_argument("--scenarios", default=None, help="comma-separated names, or 'all'")
    p.add_argument("--scale", type=int, default=10, help="pgbench -i -s")
    p.add_argument("--warmup", type=int, default=3, help="seconds of warm-up per target")
    p.add_argument("--pause", type=float, default=1.0, help="seconds between runs")
    add_target_args(p)
    p.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 5, 1
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(args.targets) - set(ALL_TARGETS)
    if unknown:
        p.error(f"unknown targets: {', '.join(sorted(unknown))}")
    if args.scenarios in (None, ""):
        args.scenario_list = [s for s in SCENARIOS if s.default]
    elif args.scenarios == "all":
        args.scenario_list = list(SCENARIOS)
    else:
        by_name = {s.name: s for s in SCENARIOS}
        wanted = [n.strip() for n in args.scenarios.split(",") if n.strip()]
        missing = [n for n in wanted if n not in by_name]
        if missing:
            p.error(f"unknown scenarios: {', '.join(missing)} (known: {names})")
        args.scenario_list = [by_name[n] for n in wanted]
    return args


def metadata(args: argparse.Namespace, pg: PgCluster) -> dict[str, Any]:
    commit = first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = first_line(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"])
    return {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "git_commit": commit,
        "git_dirty": bool(dirty),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "postgres": first_line([os.path.join(pg.bindir, "postgres"), "--version"]),
        "pgbench": first_line([tool_path("pgbench"), "--version"]),
        "pgbouncer": first_line([args.pgbouncer, "--version"])
        if "pgbouncer" in args.targets
        else None,
        "pgusher_cmd": args.pgusher_cmd,
        "rounds": args.rounds,
        "duration_s": args.duration,
        "scale": args.scale,
        "targets": args.targets,
        "pooler_config": pooler_sections(pg)["pgbouncer"],
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    raise_nofile_limit()
    if find_bindir() is None:
        log("PostgreSQL server binaries not found (install postgresql-15 or set PG_BINDIR)")
        return 2

    pg = PgCluster(hba=TRUST_HBA, settings={"max_connections": "300", "shared_buffers": "128MB"})
    poolers: dict[str, PoolerProc] = {}
    status = 0
    try:
        log(f"starting PostgreSQL on port {pg.port} ({pg.basedir})")
        pg.start()
        pg.create_database(DBNAME)
        log(f"pgbench -i -s {args.scale}")
        rc, _out, err = run_pgbench(
            ["-i", "-q", "-s", str(args.scale), *pgbench_conn(pg.host, pg.port)]
        )
        if rc != 0:
            log(f"pgbench -i failed:\n{err}")
            return 2
        pg.sql("CHECKPOINT; VACUUM ANALYZE;")

        endpoints: dict[str, tuple[str, int]] = {}
        for name in args.targets:
            if name == "direct":
                endpoints[name] = (pg.host, pg.port)
                continue
            try:
                proc = start_target(name, pg, args)
            except Exception as exc:  # report and go on with the other targets
                log(f"!! {name} did not start, leaving it out:\n{exc}")
                status = 2
                continue
            poolers[name] = proc
            endpoints[name] = (proc.host, proc.port)
            log(f"{name} listening on {proc.host}:{proc.port} (files in {proc.workdir})")
        targets = [t for t in args.targets if t in endpoints]

        if args.warmup > 0:
            warm = Scenario("warmup", "warm-up", ("-S", "-c", "10", "-j", "2"))
            for t in targets:
                run_one(warm, *endpoints[t], args.warmup, 0)

        cells: dict[tuple[str, str], Cell] = {}
        for rnd in range(1, args.rounds + 1):
            for sc in args.scenario_list:
                for t in list(targets):
                    if t not in sc.targets:
                        continue
                    time.sleep(args.pause)
                    run, _out, _err = run_one(sc, *endpoints[t], args.duration, rnd)
                    cells.setdefault((sc.name, t), Cell()).runs.append(run)
                    line = (
                        f"[round {rnd}/{args.rounds}] {sc.name:<22} {t:<9} "
                        f"tps {fmt(run.tps):>10}  lat {fmt(run.latency_avg_ms, 3):>8} ms  "
                        f"failed {run.failed}"
                    )
                    if run.error:
                        line += f"  ERROR rc={run.rc}: {run.error.splitlines()[-1]}"
                    log(line)
                    running = poolers.get(t)
                    if running is not None and not running.is_running():
                        log(f"!! {t} exited during the run; log:\n{running.log_text()[-3000:]}")
                        del endpoints[t]
                        targets.remove(t)
                        status = 2

        table, data = report(args.scenario_list, cells, args.targets)
        print()
        print(table)
        result = {"meta": metadata(args, pg), "scenarios": data}
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2) + "\n")
        log(f"\nresults written to {args.output}")
        return status
    finally:
        for proc in poolers.values():
            proc.stop(timeout=10)
            proc.cleanup()
        pg.destroy()


if __name__ == "__main__":
    sys.exit(main())
