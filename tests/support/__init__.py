"""Test support: a throwaway PostgreSQL cluster, a pooler launcher, client-tool helpers."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .pg import (
    PASSWORDS,
    TEST_HBA,
    TRUST_HBA,
    PgCluster,
    PgError,
    find_bindir,
    free_port,
    libpq_dsn,
    raise_nofile_limit,
    start_test_cluster,
)
from .pooler import (
    PoolerError,
    PoolerFactory,
    PoolerProc,
    default_databases,
    pooler_command,
    start_pooler,
    write_userlist,
)

__all__ = [
    "PASSWORDS",
    "TEST_HBA",
    "TRUST_HBA",
    "PgCluster",
    "PgError",
    "PgbenchResult",
    "PoolerError",
    "PoolerFactory",
    "PoolerProc",
    "default_databases",
    "find_bindir",
    "free_port",
    "libpq_dsn",
    "parse_pgbench",
    "pooler_command",
    "raise_nofile_limit",
    "run_pgbench",
    "run_psql",
    "start_pooler",
    "start_test_cluster",
    "tool_path",
    "write_userlist",
]


def tool_path(name: str) -> str:
    """Path of a PostgreSQL client program (psql, pgbench, ...)."""
    bindir = find_bindir()
    if bindir and os.access(os.path.join(bindir, name), os.X_OK):
        return os.path.join(bindir, name)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found (install postgresql-client)")
    return found


def run_psql(
    dsn_or_args: str | Sequence[str],
    sql: str | None = None,
    input: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run psql; never raises on a non-zero exit (check ``.returncode``).

    ``dsn_or_args`` is a connection string, or a list of psql arguments.  Flags
    always given: ``-X -A -t -v ON_ERROR_STOP=1`` (no psqlrc, unaligned, tuples
    only).  ``sql`` is sent with ``-c``; ``input`` is fed on stdin.
    """
    args = [tool_path("psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
    if isinstance(dsn_or_args, str):
        args += ["-d", dsn_or_args]
    else:
        args += list(dsn_or_args)
    if sql is not None:
        args += ["-c", sql]
    run_env = dict(os.environ if env is None else env)
    run_env.setdefault("PGCONNECT_TIMEOUT", "10")
    return subprocess.run(
        args,
        input=input if input is not None else "",
        capture_output=True,
        text=True,
        env=run_env,
        timeout=timeout,
        check=False,
    )


def run_pgbench(
    args: Sequence[str],
    env: Mapping[str, str] | None = None,
    *,
    timeout: float | None = None,
) -> tuple[int, str, str]:
    """Run pgbench with ``args``; return (returncode, stdout, stderr).

    ``env`` is merged over os.environ (handy for PGPASSWORD etc.).
    """
    raise_nofile_limit()
    run_env = dict(os.environ)
    if env:
        run_env.update(env)
    proc = subprocess.run(
        [tool_path("pgbench"), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=run_env,
        timeout=timeout,
        check=False,
    )
    return proc.returncode, proc.stdout, proc.stderr


@dataclass
class PgbenchResult:
    tps: float | None  # None when pgbench printed no tps line
    latency_avg_ms: float | None
    transactions: int | None  # "number of transactions actually processed"
    failed: int  # "number of failed transactions" (0 when not printed)
    aborted_clients: int  # clients that stopped on an error ("... aborted in command ...")
    connection_time_ms: float | None  # initial / average connection time

    @property
    def ok(self) -> bool:
        return self.tps is not None and self.failed == 0 and self.aborted_clients == 0


_NUM = r"([0-9]+(?:\.[0-9]+)?|NaN|nan|inf)"


def _search_float(pattern: str, text: str) -> float | None:
    m = re.search(pattern, text, re.MULTILINE)
    return float(m.group(1)) if m else None


def parse_pgbench(stdout: str, stderr: str = "") -> PgbenchResult:
    """Parse the summary pgbench (PostgreSQL 15 format, older tolerated) prints."""
    tps = _search_float(rf"^tps = {_NUM}", stdout)
    latency = _search_float(rf"^latency average = {_NUM} ms", stdout)
    conn_time = _search_float(rf"^(?:initial|average) connection time = {_NUM} ms", stdout)
    m = re.search(r"^number of transactions actually processed: ([0-9]+)", stdout, re.M)
    transactions = int(m.group(1)) if m else None
    m = re.search(r"^number of failed transactions: ([0-9]+)", stdout, re.M)
    failed = int(m.group(1)) if m else 0
    aborted = len(re.findall(r"client \d+ (?:script \d+ )?aborted", stderr))
    return PgbenchResult(
        tps=tps,
        latency_avg_ms=latency,
        transactions=transactions,
        failed=failed,
        aborted_clients=aborted,
        connection_time_ms=conn_time,
    )
