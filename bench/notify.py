"""LISTEN/NOTIFY through pgusher in transaction mode: delivery latency, and what it costs
ordinary traffic.

usage: python bench/notify.py [--duration 10] [--rate 1000] [--clients 50] [--rounds 3]

Strategy: one PostgreSQL, and pgusher in transaction mode in front of it (the only pooler
target: PgBouncer does not keep LISTEN in transaction mode). Each round runs pgbench
``-S -c (clients - listeners)`` through pgusher twice, side by side with the same duration:

- ``quiet``: pgbench alone;
- ``notify``: pgbench, plus 10% of the clients (asyncpg connections through pgusher) that
  LISTEN on one channel, and a sender connected to PostgreSQL directly that NOTIFYs
  ``--rate`` times a second with its send time as the payload.

Every listener notes how long each notification took from the sender's NOTIFY to its own
callback (both on this machine's monotonic clock); the report gives the delivery p50 and
p99 over all listeners, the notifications lost (sent but not received by every listener),
and pgbench's tps in both runs, whose ratio is what the listener costs ordinary traffic.
The same listeners and sender straight to PostgreSQL, without pgbench, give the delivery
latency with no pooler and no load, as a floor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import threading
import time
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from targets import DBNAME, PGUSHER, USER, add_target_args, start_target  # noqa: E402

from support import TRUST_HBA, PgCluster, parse_pgbench, raise_nofile_limit, run_pgbench  # noqa: E402

CHANNEL = "bench_events"


def percentile(ordered: list[float], fraction: float) -> float | None:
    if not ordered:
        return None
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


async def notify_load(host: str, port: int, sender_port: int, listeners: int, rate: int,
                      duration: float) -> dict[str, float | int | None]:
    """``listeners`` connections to host:port LISTEN; a sender on sender_port NOTIFYs."""
    latencies: list[float] = []
    received = [0] * listeners
    conns = []
    for i in range(listeners):
        conn = await asyncpg.connect(host=host, port=port, user=USER, database=DBNAME,
                                     statement_cache_size=0)

        def on(_c: object, _pid: int, _ch: str, payload: str, i: int = i) -> None:
            latencies.append(time.monotonic() - float(payload))
            received[i] += 1

        await conn.add_listener(CHANNEL, on)
        conns.append(conn)
    sender = await asyncpg.connect(host=host, port=sender_port, user=USER, database=DBNAME)
    sent = 0
    start = time.monotonic()
    interval = 1.0 / rate
    while time.monotonic() - start < duration:
        due = start + sent * interval
        now = time.monotonic()
        if due > now:
            await asyncio.sleep(due - now)
        await sender.execute(f"NOTIFY {CHANNEL}, '{time.monotonic():.6f}'")
        sent += 1
    await asyncio.sleep(1.0)  # the last ones in flight
    for conn in conns:
        await conn.close()
    await sender.close()
    ordered = sorted(latencies)
    return {"sent": sent, "listeners": listeners,
            "lost": sent * listeners - sum(received),
            "p50_ms": None if not ordered else percentile(ordered, 0.5) * 1000,  # type: ignore[operator]
            "p99_ms": None if not ordered else percentile(ordered, 0.99) * 1000,  # type: ignore[operator]
            "mean_ms": statistics.fmean(ordered) * 1000 if ordered else None}


def pgbench_tps(port: int, clients: int, duration: int) -> float | None:
    rc, out, err = run_pgbench(["-n", "-S", "-c", str(clients), "-j", "2", "-T", str(duration),
                                "-h", "127.0.0.1", "-p", str(port), "-U", USER, DBNAME],
                               timeout=duration + 120)
    if rc != 0:
        print(f"pgbench failed: {err.strip()}", file=sys.stderr)
        return None
    return parse_pgbench(out, err).tps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=int, default=10)
    p.add_argument("--rate", type=int, default=1000, help="notifications per second")
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", default="", help="write the figures here too")
    add_target_args(p)
    args = p.parse_args(argv)
    raise_nofile_limit()
    listeners = max(1, args.clients // 10)
    pg = PgCluster(hba=TRUST_HBA, settings={"max_connections": "200"})
    rounds = []
    try:
        pg.start()
        pg.create_database(DBNAME)
        rc, _out, err = run_pgbench(["-i", "-s", "10", "-q", "-h", "127.0.0.1", "-p",
                                     str(pg.port), "-U", USER, DBNAME], timeout=600)
        if rc != 0:
            print(f"pgbench -i failed: {err}", file=sys.stderr)
            return 2
        proc = start_target(PGUSHER, pg, args)
        try:
            for rnd in range(1, args.rounds + 1):
                quiet = pgbench_tps(proc.port, args.clients - listeners, args.duration)
                figures: dict[str, float | int | None] = {}

                def load(figures: dict[str, float | int | None] = figures) -> None:
                    figures.update(asyncio.run(notify_load(
                        "127.0.0.1", proc.port, pg.port, listeners, args.rate,
                        args.duration)))

                thread = threading.Thread(target=load)
                thread.start()
                busy = pgbench_tps(proc.port, args.clients - listeners, args.duration)
                thread.join(args.duration + 60)
                if thread.is_alive():
                    print("the notification load did not finish", file=sys.stderr)
                    return 2
                direct = asyncio.run(notify_load("127.0.0.1", pg.port, pg.port, listeners,
                                                 args.rate, min(args.duration, 5)))
                row = {"round": rnd, "tps_quiet": quiet, "tps_with_notify": busy,
                       "tps_ratio": busy / quiet if quiet and busy else None,
                       "pgusher": figures, "direct": direct}
                rounds.append(row)
                print(json.dumps(row))
        finally:
            proc.cleanup()
    finally:
        pg.destroy()
    print(f"\n{'round':>5} {'tps quiet':>10} {'tps notify':>11} {'ratio':>6} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'lost':>5} {'direct p99':>10}")
    for row in rounds:
        f, d = row["pgusher"], row["direct"]
        print(f"{row['round']:>5} {row['tps_quiet'] or 0:>10.0f} "
              f"{row['tps_with_notify'] or 0:>11.0f} {row['tps_ratio'] or 0:>6.2f} "
              f"{f['p50_ms'] or 0:>7.2f} {f['p99_ms'] or 0:>7.2f} {f['lost']:>5} "
              f"{d['p99_ms'] or 0:>10.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rounds, indent=1))
    return 0 if all(row["pgusher"]["lost"] == 0 for row in rounds) else 1


if __name__ == "__main__":
    sys.exit(main())
