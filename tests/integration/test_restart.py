"""PostgreSQL restarted under load: only the work in flight fails, the rest waits and is served.

These tests restart or kill their own cluster, never the session one other tests share.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from poolcase import start

from support import (
    PgCluster,
    PoolerFactory,
    find_bindir,
    parse_pgbench,
    run_pgbench,
    start_test_cluster,
    tool_path,
)

POOL_SIZE = 5
CLIENTS = 20


@pytest.fixture(scope="module")
def own_pg() -> Iterator[PgCluster]:
    cluster = start_test_cluster(find_bindir())
    try:
        rc, _out, err = run_pgbench(["-i", "-s", "1", "-q", "-h", cluster.socket_dir,
                                     "-p", str(cluster.port), "-U", "postgres", "app"])
        assert rc == 0, err
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def own(own_pg: PgCluster) -> Iterator[PgCluster]:
    own_pg.ensure_running()
    yield own_pg
    own_pg.ensure_running()


def first_success(attempt: Callable[[], None], deadline: float) -> float:
    """Call ``attempt`` until it does not raise; the monotonic time it first succeeded."""
    while True:
        try:
            attempt()
            return time.monotonic()
        except psycopg.Error:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def fast_stop(cluster: PgCluster) -> None:
    cluster.stop("fast")


def crash(cluster: PgCluster) -> None:
    cluster.kill_postmaster()


@pytest.mark.parametrize("stop", [fast_stop, crash], ids=["restart-fast", "kill-9"])
def test_restart_under_pgbench(own: PgCluster, pooler: PoolerFactory,
                               stop: Callable[[PgCluster], None]) -> None:
    # The default server_login_retry (15 s): recovery must not wait for it.
    proc = start(pooler, pool_size=POOL_SIZE, max_client_conn=100, server_login_retry=15,
                 databases={"app": f"host=127.0.0.1 port={own.port} dbname=app"})
    bench = subprocess.Popen(
        [tool_path("pgbench"), "-n", "-c", str(CLIENTS), "-j", "2", "-T", "8",
         "-h", proc.host, "-p", str(proc.port), "-U", "postgres", "app"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2.5)
        stop(own)
        # From here the server is down. One client of the pooler asks right away: it has
        # nothing in flight, so it waits and is answered once the server is back.
        served: list[float] = []
        failed: list[str] = []

        def through_pooler() -> None:
            try:
                with psycopg.connect(proc.dsn("postgres"), autocommit=True) as conn:
                    conn.execute("select 1")
                    served.append(time.monotonic())
            except psycopg.Error as exc:
                failed.append(str(exc))

        waiter = threading.Thread(target=through_pooler)
        waiter.start()
        accepting: list[float] = []

        def direct() -> None:
            def attempt() -> None:
                with psycopg.connect(own.dsn("postgres"), connect_timeout=2) as conn:
                    conn.execute("select 1")

            accepting.append(first_success(attempt, time.monotonic() + 60))

        prober = threading.Thread(target=direct)
        prober.start()
        time.sleep(0.3)
        own.start()
        prober.join(60)
        waiter.join(60)
        out, err = bench.communicate(timeout=60)
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.communicate()
    result = parse_pgbench(out, err)
    assert accepting and served, f"{failed}\n{proc.log_text()}"
    recovery = served[0] - accepting[0]
    outage = re.search(r"server login works again, after ([0-9.]+)s of failures",
                       Path(proc.log_path).read_text())
    print(f"{stop.__name__}: {result.aborted_clients} of {CLIENTS} clients aborted "
          f"(pool size {POOL_SIZE}), {result.transactions} transactions; logins failed for "
          f"{outage.group(1) if outage else '?'} s; pooler served {recovery:.3f} s after the "
          "server accepted connections")
    # Only the transactions in flight fail: at most one per server connection.
    assert result.aborted_clients <= POOL_SIZE, err
    assert result.transactions and result.transactions > 100, out + err
    assert recovery < 1.0, proc.log_text()
    assert proc.is_running()
