#!/usr/bin/env python3
"""Memory cost of idle client connections: pgusher (1 worker and auto) vs PgBouncer.

    python bench/idle_memory.py [--clients 10000] [--targets pgusher,pgusher-auto,pgbouncer]
                                [--batch 500] [--settle 2]

A private PostgreSQL cluster is created (trust auth on loopback, as in
bench/run.py, which also runs this measurement as part of its one command).
For every target, one after the other, the pooler is started (transaction
pooling, auth_type trust, default_pool_size 20, max_client_conn clients + 100),
one warm-up client logs in and runs ``select 1`` (so the pool holds a server
connection), and the pooler's RSS is sampled: VmRSS of its process plus that of
every process below it (found by scanning /proc for parent ids), so a pooler
that forks worker processes is counted whole.  Then N clients log in (v3
StartupMessage, trust auth, read until ReadyForQuery) from this one process
with asyncio, ``--batch`` logins in flight at a time, and all of them stay
open and idle.  After ``--settle`` seconds the RSS is sampled again; the
difference divided by the number of clients that logged in is the cost of one
idle client.  Summed RSS counts pages shared between forked processes once
per process; both samples count them alike, so the difference is the memory
the idle clients added.  A table goes to stdout, all figures to
bench/results/idle_memory.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as _dt
import json
import os
import platform
import resource
import signal
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from targets import (
    DBNAME,
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
)

PROTOCOL_V3 = 196608


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- process figures


def proc_status(pid: int) -> dict[str, int]:
    """Memory fields (kB) of /proc/<pid>/status."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
            out[key] = int(rest.split()[0])
    return out


def descendants(pid: int) -> list[int]:
    """PIDs of all processes below ``pid``."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def sample(pid: int) -> dict[str, Any]:
    """RSS of the pooler process and of the processes below it (its workers, if any)."""
    st = proc_status(pid)
    kids = descendants(pid)
    kids_rss = 0
    for kid in kids:
        with contextlib.suppress(OSError):
            kids_rss += proc_status(kid).get("VmRSS", 0)
    return {
        "rss_kb": st.get("VmRSS"),
        "rss_anon_kb": st.get("RssAnon"),
        "hwm_kb": st.get("VmHWM"),
        "threads": st.get("Threads"),
        "children": len(kids),
        "children_rss_kb": kids_rss,
        "total_rss_kb": st.get("VmRSS", 0) + kids_rss,
        "open_fds": sum(open_fds(p) or 0 for p in [pid, *kids]),
    }


# --------------------------------------------------------------------------- wire protocol


def startup_message(user: str, database: str) -> bytes:
    body = struct.pack("!I", PROTOCOL_V3)
    for key, val in (("user", user), ("database", database)):
        body += key.encode() + b"\0" + val.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def query_message(sql: str) -> bytes:
    payload = sql.encode() + b"\0"
    return b"Q" + struct.pack("!I", len(payload) + 4) + payload


TERMINATE = b"X" + struct.pack("!I", 4)


class ServerError(RuntimeError):
    pass


async def read_until_ready(reader: asyncio.StreamReader) -> None:
    """Read backend messages until ReadyForQuery; raise on ErrorResponse or
    on an authentication request other than AuthenticationOk."""
    while True:
        head = await reader.readexactly(5)
        kind = head[:1]
        (length,) = struct.unpack("!I", head[1:])
        body = await reader.readexactly(length - 4)
        if kind == b"Z":
            return
        if kind == b"E":
            fields = [f[1:].decode(errors="replace") for f in body.split(b"\0") if f]
            raise ServerError("server error: " + "; ".join(fields))
        if kind == b"R":
            (code,) = struct.unpack("!I", body[:4])
            if code != 0:
                raise ServerError(f"authentication request {code} (expected trust)")


class Client:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def login(cls, host: str, port: int, timeout: float) -> Client:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        try:
            writer.write(startup_message(USER, DBNAME))
            await asyncio.wait_for(read_until_ready(reader), timeout)
        except BaseException:
            writer.close()
            raise
        return cls(reader, writer)

    async def query(self, sql: str, timeout: float = 10) -> None:
        self.writer.write(query_message(sql))
        await asyncio.wait_for(read_until_ready(self.reader), timeout)

    def close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError):
            self.writer.write(TERMINATE)
        self.writer.close()


async def open_clients(
    host: str, port: int, count: int, batch: int, timeout: float
) -> tuple[list[Client], dict[str, int]]:
    """Log ``count`` clients in, ``batch`` at a time; return those that made it
    and a tally of the errors of the others."""
    sem = asyncio.Semaphore(batch)
    clients: list[Client] = []
    errors: dict[str, int] = {}

    async def one() -> None:
        async with sem:
            try:
                clients.append(await Client.login(host, port, timeout))
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ServerError) as e:
                key = f"{type(e).__name__}: {e}"[:200]
                errors[key] = errors.get(key, 0) + 1

    started = time.monotonic()
    tasks = [asyncio.create_task(one()) for _ in range(count)]
    for done, fut in enumerate(asyncio.as_completed(tasks), 1):
        await fut
        if done % 2000 == 0 or done == count:
            log(f"  {done}/{count} logins finished, {len(clients)} ok "
                f"({time.monotonic() - started:.1f} s)")  # fmt: skip
    return clients, errors


async def close_clients(clients: Sequence[Client]) -> None:
    for n, c in enumerate(clients):
        c.close()
        if n % 1000 == 999:
            await asyncio.sleep(0)
    await asyncio.sleep(0.5)


# --------------------------------------------------------------------------- one target


@dataclass(frozen=True)
class IdleOptions:
    clients: int = 10000  # idle clients to open
    batch: int = 500  # logins in flight at a time
    settle: float = 2.0  # seconds before each RSS sample
    timeout: float = 30.0  # seconds per login


async def measure(proc: PoolerProc, opts: IdleOptions) -> dict[str, Any]:
    pid = proc.pid
    if pid is None:
        raise RuntimeError("pooler is not running")
    warm = await Client.login(proc.host, proc.port, opts.timeout)
    await warm.query("select 1")
    warm.close()
    await asyncio.sleep(opts.settle)
    before = sample(pid)
    log(f"  before: RSS {before['total_rss_kb']} kB in {1 + before['children']} processes, "
        f"{before['open_fds']} fds")  # fmt: skip

    started = time.monotonic()
    clients, errors = await open_clients(
        proc.host, proc.port, opts.clients, opts.batch, opts.timeout
    )
    login_s = time.monotonic() - started
    await asyncio.sleep(opts.settle)
    after = sample(pid)
    alive = proc.is_running()
    log(f"  after:  RSS {after['total_rss_kb']} kB in {1 + after['children']} processes, "
        f"{after['open_fds']} fds, {len(clients)} idle clients open")  # fmt: skip
    for msg, n in errors.items():
        log(f"  !! {n} logins failed: {msg}")

    await close_clients(clients)
    n = len(clients)
    delta_kb = after["total_rss_kb"] - before["total_rss_kb"]
    return {
        "pid": pid,
        "processes": 1 + after["children"],
        "clients_requested": opts.clients,
        "clients_open": n,
        "login_errors": errors,
        "login_seconds": round(login_s, 2),
        "before": before,
        "after": after,
        "rss_delta_kb": delta_kb,
        "bytes_per_client": round(delta_kb * 1024 / n) if n else None,
        "pooler_alive": alive,
    }


def measure_target(
    name: str, pg: PgCluster, opts: IdleOptions, commands: argparse.Namespace
) -> dict[str, Any]:
    """Start pooler ``name``, measure it and stop it; errors end up in the result."""
    log(f"{name}: starting")
    try:
        proc = start_target(name, pg, commands, max_client_conn=opts.clients + 100)
    except Exception as exc:
        log(f"!! {name} did not start:\n{exc}")
        return {"error": f"did not start: {exc}"}
    try:
        log(f"{name}: pid {proc.pid}, listening on {proc.host}:{proc.port}, "
            f"{opts.clients} clients")  # fmt: skip
        return asyncio.run(measure(proc, opts))
    except Exception as exc:
        log(f"!! {name} failed: {exc}\n{proc.log_text()[-3000:]}")
        return {"error": str(exc)}
    finally:
        proc.stop(timeout=10)
        proc.cleanup()


def measure_targets(
    names: Sequence[str], pg: PgCluster, opts: IdleOptions, commands: argparse.Namespace
) -> dict[str, dict[str, Any]]:
    """``measure_target`` for each name in turn, with a pause between them."""
    results: dict[str, dict[str, Any]] = {}
    for n, name in enumerate(names):
        if n:
            time.sleep(1)
        results[name] = measure_target(name, pg, opts, commands)
    return results


def complete(results: dict[str, dict[str, Any]], opts: IdleOptions) -> bool:
    """True when every target measured all the clients asked for."""
    return all(r.get("clients_open", 0) >= opts.clients for r in results.values())


# --------------------------------------------------------------------------- main


def raise_own_nofile() -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def fitting_clients(requested: int) -> int:
    """``requested``, or fewer when this process may not open that many sockets."""
    soft, hard = raise_own_nofile()
    # Each idle client is one socket here and one in the pooler, plus a few
    # files of our own (event loop, logs); the pooler's own limit is raised
    # by the harness when it is spawned (children inherit ours).
    reserve = 64
    if requested + reserve <= soft:
        return requested
    log(f"RLIMIT_NOFILE is {soft} (hard {hard}): at most {soft - reserve} clients "
        f"fit in this process; using that instead of {requested}")  # fmt: skip
    return soft - reserve


def meta(opts: IdleOptions, pg: PgCluster, commands: argparse.Namespace) -> dict[str, Any]:
    return {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "client_nofile_limit": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
        "clients": opts.clients,
        "batch": opts.batch,
        "settle_s": opts.settle,
        "pgusher_cmd": commands.pgusher_cmd,
        "pgbouncer": commands.pgbouncer,
        "pooler_config": pooler_sections(pg, max_client_conn=opts.clients + 100)["pgbouncer"],
    }


def fmt_kb(kb: int | None) -> str:
    return "-" if kb is None else f"{kb / 1024:,.1f} MiB"


def table(results: dict[str, dict[str, Any]]) -> str:
    header = (
        "target", "processes", "clients", "RSS before", "RSS after", "delta",
        "bytes/idle client",
    )  # fmt: skip
    rows = [header]
    for name, r in results.items():
        if "error" in r:
            rows.append((name, "-", "-", "-", "-", "-", f"error: {r['error'][:60]}"))
            continue
        per = r["bytes_per_client"]
        rows.append(
            (
                name,
                str(r["processes"]),
                f"{r['clients_open']:,}",
                fmt_kb(r["before"]["total_rss_kb"]),
                fmt_kb(r["after"]["total_rss_kb"]),
                fmt_kb(r["rss_delta_kb"]),
                "-" if per is None else f"{per:,}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for n, row in enumerate(rows):
        cols = [c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row)]
        lines.append("  ".join(cols).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--clients", type=int, default=10000, help="idle clients to open")
    p.add_argument("--targets", default=",".join(POOLERS))
    p.add_argument("--batch", type=int, default=500, help="logins in flight at a time")
    p.add_argument("--settle", type=float, default=2.0, help="seconds before each RSS sample")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per login")
    add_target_args(p)
    p.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "idle_memory.json")
    args = p.parse_args(argv)
    args.targets = parse_target_list(p, args.targets, POOLERS)
    if args.clients < 1:
        p.error("--clients must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    opts = IdleOptions(
        clients=fitting_clients(args.clients),
        batch=args.batch,
        settle=args.settle,
        timeout=args.timeout,
    )
    if find_bindir() is None:
        log("PostgreSQL server binaries not found (install postgresql-15 or set PG_BINDIR)")
        return 2

    pg = PgCluster(hba=TRUST_HBA, settings={"max_connections": "100"})
    try:
        log(f"starting PostgreSQL on port {pg.port} ({pg.basedir})")
        pg.start()
        pg.create_database(DBNAME)
        results = measure_targets(args.targets, pg, opts, args)
        print()
        print(table(results))
        result = {"meta": meta(opts, pg, args), "targets": results}
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2) + "\n")
        log(f"\nresults written to {args.output}")
        return 0 if complete(results, opts) else 2
    finally:
        pg.destroy()


if __name__ == "__main__":
    sys.exit(main())
