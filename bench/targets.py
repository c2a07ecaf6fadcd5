"""The targets the benchmarks compare, and how each pooler is configured and started.

Strategy: every pooler gets the same ``[databases]`` and ``[pgbouncer]`` sections
(transaction pooling, trust authentication, the pool size the workload asks for), so
targets differ only in the program behind the port:

- ``direct``: PostgreSQL itself, no pooler;
- ``pgusher``: pgusher with ``workers = 1`` in its ``[pgusher]`` section;
- ``pgusher-auto``: pgusher with ``workers = auto`` (one worker per core);
- ``pgbouncer``: PgBouncer (Debian's package by default);
- ``pgusher-base``: pgusher (``workers = 1``) from another source tree given with
  ``--base-src`` (a checkout of an older commit): the same run measures before and after.
  It is not among the default targets.

Each pooler gets a fresh work directory from tests/support's ``start_pooler``, which, when we
are root, runs PgBouncer as the ``postgres`` user and starts pgusher with ``-u postgres``
(neither runs as root).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

from support import PgCluster, PoolerProc, start_pooler  # noqa: E402

DIRECT = "direct"
PGUSHER = "pgusher"
PGUSHER_AUTO = "pgusher-auto"
PGBOUNCER = "pgbouncer"
PGUSHER_BASE = "pgusher-base"
DEFAULT_TARGETS = (DIRECT, PGUSHER, PGUSHER_AUTO, PGBOUNCER)
ALL_TARGETS = (*DEFAULT_TARGETS, PGUSHER_BASE)
POOLERS = (PGUSHER, PGUSHER_AUTO, PGBOUNCER, PGUSHER_BASE)
PGUSHER_WORKERS = {PGUSHER: "1", PGUSHER_AUTO: "auto", PGUSHER_BASE: "1"}

DBNAME = "app"
USER = "postgres"
DEFAULT_POOL_SIZE = 20
DEFAULT_MAX_CLIENT_CONN = 3000


def pooler_sections(
    pg: PgCluster,
    pool_size: int = DEFAULT_POOL_SIZE,
    max_client_conn: int = DEFAULT_MAX_CLIENT_CONN,
) -> dict[str, dict[str, str]]:
    """The configuration every pooler gets, PgBouncer and pgusher alike."""
    return {
        "databases": {DBNAME: f"host={pg.host} port={pg.port} dbname={DBNAME}"},
        "pgbouncer": {
            "pool_mode": "transaction",
            "default_pool_size": str(pool_size),
            "max_client_conn": str(max_client_conn),
            "auth_type": "trust",
        },
    }


def target_sections(
    name: str,
    pg: PgCluster,
    pool_size: int = DEFAULT_POOL_SIZE,
    max_client_conn: int = DEFAULT_MAX_CLIENT_CONN,
) -> dict[str, dict[str, str]]:
    """``pooler_sections`` plus pgusher's own ``[pgusher]`` section for the pgusher targets."""
    sections = pooler_sections(pg, pool_size, max_client_conn)
    if name in PGUSHER_WORKERS:
        sections["pgusher"] = {"workers": PGUSHER_WORKERS[name]}
    return sections


def target_command(name: str, args: argparse.Namespace) -> list[str]:
    if name == PGUSHER_BASE:
        if not args.base_src:
            raise ValueError("pgusher-base needs --base-src (the src/ of another checkout)")
        # Its src/ goes first on sys.path, ahead of the PYTHONPATH the starter sets.
        boot = (f"import runpy, sys; sys.path.insert(0, {str(args.base_src)!r}); "
                "runpy.run_module('pgusher', run_name='__main__', alter_sys=True)")
        return [sys.executable, "-c", boot]
    if name in PGUSHER_WORKERS:
        return shlex.split(args.pgusher_cmd)
    if name == PGBOUNCER:
        return [args.pgbouncer]
    raise ValueError(f"{name} is not a pooler")


def start_target(
    name: str,
    pg: PgCluster,
    args: argparse.Namespace,
    pool_size: int = DEFAULT_POOL_SIZE,
    max_client_conn: int = DEFAULT_MAX_CLIENT_CONN,
) -> PoolerProc:
    """Start the pooler ``name`` in front of ``pg``; return once it accepts connections."""
    sections = target_sections(name, pg, pool_size, max_client_conn)
    return start_pooler(sections, {USER: ""}, cmd=target_command(name, args), pg=pg, timeout=20)


def add_target_args(p: argparse.ArgumentParser) -> None:
    """The options naming the pooler commands, shared by the bench scripts."""
    p.add_argument(
        "--pgusher-cmd",
        default=shlex.join([sys.executable, "-m", "pgusher"]),
        help="command starting pgusher (the ini path is appended)",
    )
    p.add_argument("--pgbouncer", default="/usr/sbin/pgbouncer")
    p.add_argument("--base-src", default="",
                   help="src/ of another pgusher checkout, for the pgusher-base target")


def parse_target_list(
    p: argparse.ArgumentParser, text: str, allowed: Sequence[str]
) -> list[str]:
    """The comma-separated target names of ``text``; unknown names are a usage error."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = sorted(set(names) - set(allowed))
    if unknown:
        p.error(f"unknown targets: {', '.join(unknown)} (known: {', '.join(allowed)})")
    return names
