#!/usr/bin/env python3
"""Fair queueing under a flood: how long the small application's clients wait.

    python bench/fair_queue.py [--seconds 15] [--hold-ms 20]

One pgusher (transaction mode, a pool of 10 servers) and two pgbench runs against it at
once: ``noisy`` with 100 clients in a tight loop and ``small`` with 5, each transaction
holding its server ``--hold-ms``. Three configurations:

- ``arrival order``: both runs log in with the same application_name, so the queue is one
  FIFO, as in PgBouncer (the baseline);
- ``equal weights``: application_name ``noisy`` and ``small``, no ``app_weights``;
- ``noisy:3``: the same with ``app_weights = noisy:3``.

Per configuration: each application's share of the transactions, and its p50/p99 *wait*:
the latency pgbench logged for each transaction (what the client saw, sampled from its
per-transaction log) less the time the transaction holds its server. The target of the
fleet's fair queueing is a p99 wait under 50 ms for the small application; the verdict is
printed beside the figure. Figures go to bench/results/fair_queue.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from targets import ROOT

from support import TRUST_HBA, PgCluster, find_bindir, raise_nofile_limit, start_pooler, tool_path

POOL = 10
TARGET_P99_WAIT_MS = 50.0
CONFIGS = [("arrival order", "", True), ("equal weights", "", False),
           ("noisy:3", "noisy:3", False)]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def latencies_ms(logdir: Path, prefix: str) -> list[float]:
    values = []
    for path in logdir.glob(f"{prefix}.*"):
        for line in path.read_text().splitlines():
            fields = line.split()
            if len(fields) > 2 and fields[2].isdigit():
                values.append(int(fields[2]) / 1000)
    return sorted(values)


def pct(ordered: list[float], fraction: float) -> float | None:
    if not ordered:
        return None
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


def one(pg: PgCluster, args: argparse.Namespace, name: str, weights: str, same_name: bool,
        script: str) -> dict[str, Any]:
    proc = start_pooler({"databases": {"app": f"host={pg.host} port={pg.port} dbname=app"},
                         "pgbouncer": {"pool_mode": "transaction", "auth_type": "trust",
                                       "default_pool_size": str(POOL),
                                       "max_client_conn": "200", "log_connections": "0",
                                       "log_disconnections": "0"},
                         "pgusher": {"app_weights": weights}}, {"postgres": ""}, pg=pg)
    out: dict[str, Any] = {"name": name}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            logdir = Path(tmp)
            runs = {}
            for app, clients in (("noisy", 100), ("small", 5)):
                runs[app] = subprocess.Popen(
                    [tool_path("pgbench"), "-n", "-f", script, "-c", str(clients),
                     "-j", "2" if clients > 10 else "1", "-T", str(args.seconds), "-l",
                     f"--log-prefix={logdir / app}", "-h", proc.host, "-p", str(proc.port),
                     "-U", "postgres", "app"],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                    env={**os.environ, "PGAPPNAME": "all" if same_name else app})
            for app, run in runs.items():
                _stdout, err = run.communicate(timeout=args.seconds + 120)
                if run.returncode != 0:
                    log(f"{name}: {app}: pgbench failed: {err.strip()[-300:]}")
            figures = {app: latencies_ms(logdir, app) for app in runs}
    finally:
        proc.stop(10)
        proc.cleanup()
    total = sum(len(v) for v in figures.values())
    for app, values in figures.items():
        waits = [max(0.0, v - args.hold_ms) for v in values]
        out[app] = {"transactions": len(values),
                    "share": round(len(values) / total, 4) if total else None,
                    "p50_wait_ms": pct(waits, 0.5), "p99_wait_ms": pct(waits, 0.99)}
    small = out["small"]["p99_wait_ms"]
    out["small_meets_target"] = small is not None and small < TARGET_P99_WAIT_MS
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=int, default=15)
    p.add_argument("--hold-ms", type=float, default=20.0)
    p.add_argument("--output", type=Path,
                   default=ROOT / "bench" / "results" / "fair_queue.json")
    args = p.parse_args(argv)
    raise_nofile_limit()
    if find_bindir() is None:
        log("PostgreSQL server binaries not found (install postgresql-15 or set PG_BINDIR)")
        return 2
    pg = PgCluster(hba=TRUST_HBA)
    load = list(os.getloadavg())
    results = []
    try:
        pg.start()
        pg.create_database("app")
        with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
            f.write(f"SELECT pg_sleep({args.hold_ms / 1000});\n")
        os.chmod(f.name, 0o644)
        try:
            for name, weights, same in CONFIGS:
                log(f"{name}: 100 noisy + 5 small clients, pool of {POOL}, {args.seconds} s")
                results.append(one(pg, args, name, weights, same, f.name))
                r = results[-1]
                log(f"  small: {r['small']['share']:.1%} of the transactions, wait p50 "
                    f"{r['small']['p50_wait_ms']:.1f} ms, p99 {r['small']['p99_wait_ms']:.1f} "
                    f"ms ({'under' if r['small_meets_target'] else 'OVER'} the "
                    f"{TARGET_P99_WAIT_MS:g} ms target); noisy: wait p50 "
                    f"{r['noisy']['p50_wait_ms']:.1f} ms, p99 {r['noisy']['p99_wait_ms']:.1f} ms")
        finally:
            os.unlink(f.name)
    finally:
        pg.destroy()
    out = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "pool": POOL,
           "hold_ms": args.hold_ms, "seconds": args.seconds, "cores": os.cpu_count(),
           "load_at_start": load, "target_p99_wait_ms": TARGET_P99_WAIT_MS, "runs": results}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=2) + "\n")
    log(f"results written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
