#!/usr/bin/env python3
"""The benchmark: PostgreSQL directly vs pgusher (1 worker, auto) vs PgBouncer.

    python bench/run.py [--rounds 3] [--duration 15] [--quick]
                        [--targets direct,pgusher,pgusher-auto,pgbouncer]
                        [--scenarios NAME,...|all] [--no-idle-memory] [--no-chart]

A private PostgreSQL cluster is created (trust auth on loopback) and filled with
``pgbench -i -s SCALE``.  Every pooler target (see bench/targets.py) is started once
per pool size the scenarios ask for, with the same configuration for all of them
(transaction pooling, max_client_conn 3000, auth_type trust, default_pool_size 20, or
50 for the 2,500-client scenario), and warmed up.  Every scenario then runs against
every target in interleaved rounds (round 1: direct, pgusher, pgusher-auto, pgbouncer;
round 2: ...), so slow drifts of the machine affect all targets alike.  Targets a
scenario cannot run against (direct PostgreSQL with 2,500 clients) are shown as n/a.

Per run we keep pgbench's tps, its failed transactions and the clients it aborted
(both count as failures), and p50/p99 latency computed from its per-transaction log
(bench/latency.py; high-rate scenarios log a sample of the transactions).  The
poolers are then stopped and bench/idle_memory.py's measurement runs for each pooler
target: RSS per idle client with 10,000 idle clients.

Output: a table of medians with ratios to PgBouncer and to direct PostgreSQL on
stdout, all figures in bench/results/latest.json, and a chart drawn from them in
bench/results/latest.png (bench/chart.py; needs matplotlib: ``pip install -e .[bench]``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import chart
import idle_memory
import latency
from targets import (
    ALL_TARGETS,
    DBNAME,
    DEFAULT_POOL_SIZE,
    DEFAULT_TARGETS,
    DIRECT,
    PGBOUNCER,
    PGUSHER_WORKERS,
    POOLERS,
    ROOT,
    USER,
    add_target_args,
    parse_target_list,
    pooler_sections,
    start_target,
)

from support import (
    TRUST_HBA,
    PgCluster,
    PoolerProc,
    find_bindir,
    parse_pgbench,
    raise_nofile_limit,
    run_pgbench,
    tool_path,
)


@dataclass(frozen=True)
class Scenario:
    """One pgbench workload.  ``args`` exclude -M, -T, logging and the connection options."""

    name: str
    description: str
    args: tuple[str, ...]
    mode: str = "simple"  # pgbench -M: simple | extended | prepared
    targets: tuple[str, ...] = ALL_TARGETS
    not_applicable: str = ""  # why the targets left out of ``targets`` are
    pool_size: int = DEFAULT_POOL_SIZE
    sampling_rate: float = 0.1  # fraction of transactions logged for the percentiles
    default: bool = True  # part of the run when --scenarios is not given

    @property
    def pgbench_args(self) -> list[str]:
        return ["-n", "-M", self.mode, *self.args]

    @property
    def clients(self) -> int:
        return int(self.args[self.args.index("-c") + 1]) if "-c" in self.args else 1


# To add a workload, add a row.  Non-default rows run with --scenarios NAME or all.
SCENARIOS: tuple[Scenario, ...] = (
    Scenario("select-c50", "select-only, 50 clients", ("-S", "-c", "50", "-j", "2")),
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
        "tpcb-c50",
        "TPC-B-like default script, 50 clients",
        ("-c", "50", "-j", "2"),
        sampling_rate=0.5,
    ),
    Scenario(
        "tenant-c50",
        "per-request tenant setting (set_config, then a select), 50 clients: every "
        "transaction is followed by pgusher's read-back of the session",
        ("-f", str(Path(__file__).resolve().parent / "tenant.sql"), "-c", "50", "-j", "2"),
    ),
    Scenario(
        "connect-select-c10",
        "select-only, new connection per transaction, 10 clients",
        ("-C", "-S", "-c", "10", "-j", "2"),
        sampling_rate=1.0,
    ),
    Scenario(
        "select-c2500",
        "select-only, 2,500 clients over 50 server connections",
        ("-S", "-c", "2500", "-j", "2"),
        targets=POOLERS,
        not_applicable="2,500 clients are more than PostgreSQL's max_connections",
        pool_size=50,
    ),
)


@dataclass
class Run:
    round: int
    rc: int
    tps: float | None
    p50_ms: float | None
    p99_ms: float | None
    latency_avg_ms: float | None
    latency_samples: int
    transactions: int | None
    failed: int
    aborted_clients: int
    connection_time_ms: float | None
    seconds: float
    error: str | None = None


def median_of(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


@dataclass
class Cell:
    """The runs of one scenario against one target."""

    runs: list[Run] = field(default_factory=list)

    @property
    def median_tps(self) -> float | None:
        return median_of(r.tps for r in self.runs)

    @property
    def median_p50_ms(self) -> float | None:
        return median_of(r.p50_ms for r in self.runs)

    @property
    def median_p99_ms(self) -> float | None:
        return median_of(r.p99_ms for r in self.runs)

    @property
    def failed(self) -> int:
        return sum(r.failed for r in self.runs)

    @property
    def aborted(self) -> int:
        return sum(r.aborted_clients for r in self.runs)

    @property
    def errors(self) -> int:
        return sum(1 for r in self.runs if r.error is not None)

    def summary(self) -> dict[str, Any]:
        return {
            "median_tps": self.median_tps,
            "median_p50_ms": self.median_p50_ms,
            "median_p99_ms": self.median_p99_ms,
            "median_latency_avg_ms": median_of(r.latency_avg_ms for r in self.runs),
            "failed_transactions": self.failed,
            "aborted_clients": self.aborted,
            "runs_with_errors": self.errors,
            "runs": [asdict(r) for r in self.runs],
        }


Cells = dict[tuple[str, str], Cell]  # (scenario, target) -> runs
Poolers = dict[tuple[str, int], PoolerProc]  # (target, pool size) -> running pooler


# --------------------------------------------------------------------------- helpers


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def first_line(cmd: Sequence[str]) -> str | None:
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else None


def proc_field(path: str, key: str) -> str | None:
    """The value of ``key: value`` in a /proc text file (cpuinfo, meminfo)."""
    try:
        for line in Path(path).read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == key:
                return value.strip()
    except OSError:
        pass
    return None


def pgbench_conn(host: str, port: int) -> list[str]:
    return ["-h", host, "-p", str(port), "-U", USER, DBNAME]


def server_connections_needed(scenarios: Sequence[Scenario], targets: Sequence[str]) -> int:
    """max_connections for the cluster: every pooler's pools full at once (pgusher-auto
    counted as one pool per core, the most it could open), direct's clients, a margin."""
    cores = os.cpu_count() or 1
    needed = 20
    for pool_size in {s.pool_size for s in scenarios}:
        for t in targets:
            if t in POOLERS:
                needed += pool_size * (cores if PGUSHER_WORKERS.get(t) == "auto" else 1)
    direct = [s.clients for s in scenarios if DIRECT in s.targets and DIRECT in targets]
    return needed + max(direct, default=0)


# --------------------------------------------------------------------------- runs


def pgbench_argv(sc: Scenario, host: str, port: int, duration: int, log_prefix: str) -> list[str]:
    argv = [*sc.pgbench_args, "-T", str(duration), "-l", "--log-prefix", log_prefix]
    if sc.sampling_rate < 1:
        argv += ["--sampling-rate", str(sc.sampling_rate)]
    return argv + pgbench_conn(host, port)


def run_one(sc: Scenario, host: str, port: int, duration: int, rnd: int) -> Run:
    """One pgbench run; latencies come from its per-transaction log in a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="pgusher-bench-") as tmp:
        argv = pgbench_argv(sc, host, port, duration, os.path.join(tmp, "txn"))
        started = time.monotonic()
        try:
            rc, out, err = run_pgbench(argv, timeout=duration * 2 + 120)
        except subprocess.TimeoutExpired:
            rc, out, err = -1, "", "pgbench timed out"
        seconds = time.monotonic() - started
        lat = latency.from_logs(Path(tmp))
    res = parse_pgbench(out, err)
    error = None
    if rc != 0 or res.tps is None or res.aborted_clients:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        error = "\n".join(lines[-5:]) or f"pgbench exit code {rc}"
    return Run(
        round=rnd,
        rc=rc,
        tps=res.tps,
        p50_ms=lat.p50_ms,
        p99_ms=lat.p99_ms,
        latency_avg_ms=res.latency_avg_ms,
        latency_samples=lat.samples,
        transactions=res.transactions,
        failed=res.failed,
        aborted_clients=res.aborted_clients,
        connection_time_ms=res.connection_time_ms,
        seconds=round(seconds, 2),
        error=error,
    )


def run_line(rnd: int, rounds: int, sc: Scenario, target: str, run: Run) -> str:
    line = (
        f"[round {rnd}/{rounds}] {sc.name:<20} {target:<12} "
        f"tps {fmt(run.tps, 0):>7}  p50 {fmt(run.p50_ms, 2):>7} ms  "
        f"p99 {fmt(run.p99_ms, 2):>7} ms  failed {run.failed}  aborted {run.aborted_clients}"
    )
    if run.error:
        line += f"  ERROR rc={run.rc}: {run.error.splitlines()[-1][:160]}"
    return line


def start_poolers(
    pg: PgCluster, args: argparse.Namespace, problems: list[str]
) -> Poolers:
    """One pooler per (target, pool size) the scenarios need; failures go to ``problems``."""
    poolers: Poolers = {}
    for pool_size in sorted({s.pool_size for s in args.scenario_list}):
        for name in args.targets:
            if name == DIRECT:
                continue
            try:
                proc = start_target(name, pg, args, pool_size=pool_size)
            except Exception as exc:  # report and go on with the other targets
                problems.append(f"{name} (pool {pool_size}) did not start: {exc}")
                log(f"!! {problems[-1]}")
                continue
            poolers[(name, pool_size)] = proc
            log(f"{name} (pool {pool_size}) listening on {proc.host}:{proc.port} "
                f"(files in {proc.workdir})")  # fmt: skip
    return poolers


def stop_poolers(poolers: Poolers) -> None:
    for proc in poolers.values():
        proc.stop(timeout=10)
        proc.cleanup()
    poolers.clear()


def endpoint(
    pg: PgCluster, poolers: Poolers, target: str, pool_size: int
) -> tuple[str, int] | None:
    if target == DIRECT:
        return pg.host, pg.port
    proc = poolers.get((target, pool_size))
    return (proc.host, proc.port) if proc is not None else None


def warm_up(pg: PgCluster, poolers: Poolers, args: argparse.Namespace) -> None:
    warm = Scenario("warmup", "warm-up", ("-S", "-c", "10", "-j", "2"), sampling_rate=0.01)
    places = [(pg.host, pg.port)] if DIRECT in args.targets else []
    places += [(p.host, p.port) for p in poolers.values()]
    for host, port in places:
        run_one(warm, host, port, args.warmup, 0)


def run_rounds(
    pg: PgCluster, poolers: Poolers, args: argparse.Namespace, problems: list[str]
) -> Cells:
    cells: Cells = {}
    for rnd in range(1, args.rounds + 1):
        for sc in args.scenario_list:
            for t in args.targets:
                if t not in sc.targets:
                    continue
                where = endpoint(pg, poolers, t, sc.pool_size)
                if where is None:
                    continue
                time.sleep(args.pause)
                run = run_one(sc, *where, args.duration, rnd)
                cells.setdefault((sc.name, t), Cell()).runs.append(run)
                log(run_line(rnd, args.rounds, sc, t, run))
                check_alive(poolers, (t, sc.pool_size), f"round {rnd}, {sc.name}", problems)
    return cells


def check_alive(
    poolers: Poolers, key: tuple[str, int], when: str, problems: list[str]
) -> None:
    """Drop a pooler that exited, noting it in ``problems`` with the end of its log."""
    proc = poolers.get(key)
    if proc is None or proc.is_running():
        return
    problems.append(f"{key[0]} (pool {key[1]}) exited during {when}")
    log(f"!! {problems[-1]}; log:\n{proc.log_text()[-3000:]}")
    proc.cleanup()
    del poolers[key]


def run_idle_memory(pg: PgCluster, args: argparse.Namespace) -> dict[str, Any] | None:
    names = [t for t in args.targets if t in POOLERS]
    if not names or not args.idle_memory:
        return None
    opts = idle_memory.IdleOptions(clients=idle_memory.fitting_clients(args.idle_clients))
    log(f"\nidle memory: {opts.clients:,} idle clients per pooler")
    results = idle_memory.measure_targets(names, pg, opts, args)
    return {
        "clients": opts.clients,
        "complete": idle_memory.complete(results, opts),
        "meta": idle_memory.meta(opts, pg, args),
        "targets": results,
    }


# --------------------------------------------------------------------------- report


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def ratios(sc: Scenario, cells: Cells, target: str) -> tuple[float | None, float | None]:
    """(tps vs PgBouncer, tps vs direct) of ``target``; None where not meaningful."""
    cell = cells.get((sc.name, target))
    tps = cell.median_tps if cell else None
    bouncer = cells.get((sc.name, PGBOUNCER))
    direct = cells.get((sc.name, DIRECT))
    vs_bouncer = ratio(tps, bouncer.median_tps) if bouncer and target in PGUSHER_WORKERS else None
    vs_direct = ratio(tps, direct.median_tps) if direct and target != DIRECT else None
    return vs_bouncer, vs_direct


def flag(sc: Scenario, cells: Cells, targets: Iterable[str]) -> str:
    """"*" when a run of one of ``targets`` had failed transactions or aborted clients."""
    hit = [cells.get((sc.name, t)) for t in targets]
    return "*" if any(c is not None and (c.failed or c.aborted) for c in hit) else ""


def table_row(sc: Scenario, cells: Cells, target: str) -> tuple[str, ...]:
    if target not in sc.targets:
        return (sc.name, target, "n/a", "", "", "", "", "", "", "")
    cell = cells.get((sc.name, target))
    if cell is None:
        return (sc.name, target, "not run", "", "", "", "", "", "", "")
    vs_bouncer, vs_direct = ratios(sc, cells, target)
    vs_bouncer_text = fmt(vs_bouncer, 2) + flag(sc, cells, (target, PGBOUNCER))
    vs_direct_text = fmt(vs_direct, 2) + flag(sc, cells, (target, DIRECT))
    if vs_bouncer is None:
        vs_bouncer_text = "-"
    if vs_direct is None:
        vs_direct_text = "n/a" if target != DIRECT and DIRECT not in sc.targets else "-"
    mark = flag(sc, cells, [target])
    return (
        sc.name, target, fmt(cell.median_tps, 0) + mark, fmt(cell.median_p50_ms, 2) + mark,
        fmt(cell.median_p99_ms, 2) + mark, str(cell.failed), str(cell.aborted),
        str(cell.errors), vs_bouncer_text, vs_direct_text,
    )  # fmt: skip


def render(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 2) -> str:
    """A plain-text table: the first ``left`` columns left-aligned, the others right."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for n, r in enumerate([header, *rows]):
        cols = [c.ljust(widths[i]) if i < left else c.rjust(widths[i]) for i, c in enumerate(r)]
        lines.append("  ".join(cols).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def table(scenarios: Sequence[Scenario], cells: Cells, targets: Sequence[str]) -> str:
    header = (
        "scenario", "target", "tps", "p50 ms", "p99 ms", "failed", "aborted", "err runs",
        "vs pgbouncer", "vs direct",
    )  # fmt: skip
    rows = [table_row(sc, cells, t) for sc in scenarios for t in targets]
    notes = (
        "medians over rounds; failed = failed transactions, aborted = clients pgbench "
        "aborted on an error, err runs = runs that aborted clients or exited non-zero; "
        "ratios compare median tps;\n* = figures from runs with failed transactions or "
        "aborted clients: they count only the work that finished"
    )
    return render(header, rows) + "\n\n" + notes


def scenario_entry(sc: Scenario, cells: Cells, targets: Sequence[str]) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": sc.name,
        "description": sc.description,
        "pgbench_args": sc.pgbench_args,
        "pool_size": sc.pool_size,
        "sampling_rate": sc.sampling_rate,
        "targets": {},
        "ratios": {},
    }
    for t in targets:
        cell = cells.get((sc.name, t))
        if t not in sc.targets:
            entry["targets"][t] = {"status": "n/a", "reason": sc.not_applicable}
        elif cell is None:
            entry["targets"][t] = {"status": "not run"}
        else:
            entry["targets"][t] = {"status": "ok", **cell.summary()}
            vs_bouncer, vs_direct = ratios(sc, cells, t)
            if vs_bouncer is not None:
                entry["ratios"][f"{t}/{PGBOUNCER}"] = vs_bouncer
            if vs_direct is not None:
                entry["ratios"][f"{t}/{DIRECT}"] = vs_direct
    return entry


def idle_table(idle: dict[str, Any] | None) -> str:
    if idle is None:
        return "idle memory: not measured"
    return "idle memory, RSS summed over the pooler's processes:\n" + idle_memory.table(
        idle["targets"]
    )


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
    p.add_argument("--targets", default=",".join(DEFAULT_TARGETS))
    p.add_argument("--scenarios", default=None, help="comma-separated names, or 'all'")
    p.add_argument("--scale", type=int, default=10, help="pgbench -i -s")
    p.add_argument("--warmup", type=int, default=3, help="seconds of warm-up per target")
    p.add_argument("--pause", type=float, default=1.0, help="seconds between runs")
    p.add_argument("--idle-clients", type=int, default=10000,
                   help="idle clients for the memory measurement")  # fmt: skip
    p.add_argument("--no-idle-memory", dest="idle_memory", action="store_false",
                   help="skip the idle-client memory measurement")  # fmt: skip
    p.add_argument("--no-chart", dest="chart", action="store_false",
                   help="do not draw the PNG chart (no matplotlib needed)")  # fmt: skip
    add_target_args(p)
    p.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "latest.json",
                   help="JSON file; the chart goes next to it with a .png suffix")  # fmt: skip
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 5, 1
    args.targets = parse_target_list(p, args.targets, ALL_TARGETS)
    if args.idle_clients < 1:
        p.error("--idle-clients must be at least 1 (use --no-idle-memory to skip)")
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


def metadata(args: argparse.Namespace, pg: PgCluster, problems: list[str]) -> dict[str, Any]:
    commit = first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = first_line(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no",
                        "--", ".", ":!bench/results"])  # fmt: skip
    return {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "git_commit": commit,
        "git_dirty": bool(dirty),
        "host": platform.node(),
        "cpu_model": proc_field("/proc/cpuinfo", "model name"),
        "cpus": os.cpu_count(),
        "memory": proc_field("/proc/meminfo", "MemTotal"),
        "load_average_at_start": args.load_at_start,
        "load_average_at_end": list(os.getloadavg()),
        "python": platform.python_version(),
        "postgres": first_line([os.path.join(pg.bindir, "postgres"), "--version"]),
        "pgbench": first_line([tool_path("pgbench"), "--version"]),
        "pgbouncer": first_line([args.pgbouncer, "--version"])
        if PGBOUNCER in args.targets
        else None,
        "pgusher_cmd": args.pgusher_cmd,
        "quick": args.quick,
        "rounds": args.rounds,
        "duration_s": args.duration,
        "scale": args.scale,
        "targets": args.targets,
        "max_connections": pg.settings["max_connections"],
        "pooler_config": pooler_sections(pg)["pgbouncer"],
        "pgusher_workers": dict(PGUSHER_WORKERS),
        "problems": problems,
    }


def prepare_database(pg: PgCluster, scale: int) -> None:
    log(f"starting PostgreSQL on port {pg.port} ({pg.basedir})")
    pg.start()
    pg.create_database(DBNAME)
    log(f"pgbench -i -s {scale}")
    rc, _out, err = run_pgbench(["-i", "-q", "-s", str(scale), *pgbench_conn(pg.host, pg.port)])
    if rc != 0:
        raise RuntimeError(f"pgbench -i failed:\n{err}")
    pg.sql("CHECKPOINT; VACUUM ANALYZE;")


def benchmark(pg: PgCluster, args: argparse.Namespace, problems: list[str]) -> Cells:
    """Start the poolers, warm up, run the interleaved rounds, stop the poolers."""
    poolers = start_poolers(pg, args, problems)
    try:
        if args.warmup > 0:
            warm_up(pg, poolers, args)
        return run_rounds(pg, poolers, args, problems)
    finally:
        stop_poolers(poolers)


def write_outputs(result: dict[str, Any], args: argparse.Namespace) -> None:
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    log(f"\nresults written to {args.output}")
    if args.chart:
        png = args.output.with_suffix(".png")
        chart.draw(result, png)
        log(f"chart written to {png}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.load_at_start = list(os.getloadavg())  # other work on the machine skews the figures
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.chart and not chart.available():
        log(chart.MISSING)
        return 2
    raise_nofile_limit()
    if find_bindir() is None:
        log("PostgreSQL server binaries not found (install postgresql-15 or set PG_BINDIR)")
        return 2

    max_conn = server_connections_needed(args.scenario_list, args.targets)
    pg = PgCluster(hba=TRUST_HBA,
                   settings={"max_connections": str(max_conn), "shared_buffers": "128MB"})
    problems: list[str] = []
    try:
        prepare_database(pg, args.scale)
        cells = benchmark(pg, args, problems)
        idle = run_idle_memory(pg, args)
        if idle is not None and not idle["complete"]:
            problems.append("idle memory: not every idle client could log in")
        print()
        print(table(args.scenario_list, cells, args.targets))
        print()
        print(idle_table(idle))
        meta = metadata(args, pg, problems)
        print(f"\nload average (1 min) at start {meta['load_average_at_start'][0]:.2f}, "
              f"at end {meta['load_average_at_end'][0]:.2f} on {meta['cpus']} CPUs")  # fmt: skip
        for problem in problems:
            print(f"problem: {problem.splitlines()[0]}")
        result = {
            "meta": meta,
            "scenarios": [scenario_entry(sc, cells, args.targets) for sc in args.scenario_list],
            "idle_memory": idle,
        }
        write_outputs(result, args)
        return 2 if problems else 0
    finally:
        pg.destroy()


if __name__ == "__main__":
    sys.exit(main())
