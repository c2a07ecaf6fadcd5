"""Shared fixtures.

``pg``      session-scoped PgCluster with the test roles and database ``app``.
``pooler``  function-scoped factory starting the pooler under test.
``tmp_path`` pytest's, readable by the user the pooler switches to when we are root.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from support import PgCluster, PoolerFactory, find_bindir, raise_nofile_limit, start_test_cluster
from support.pg import service_user

raise_nofile_limit()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    # On failure, attach the logs of the poolers the test started to the report.
    report = yield
    factory = getattr(item, "funcargs", {}).get("pooler")
    if report.failed and isinstance(factory, PoolerFactory):
        for proc in factory.started:
            report.sections.append((f"pooler log (port {proc.port})", proc.log_text()))
    return report


@pytest.fixture
def tmp_path(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """As root the pooler runs with ``-u postgres`` and reads its files again on reload as
    that user: the directories down to the test's own are opened for reading."""
    if service_user() is not None:
        top = tmp_path_factory.getbasetemp().parent
        for directory in (tmp_path, *tmp_path.parents):
            os.chmod(directory, 0o755)
            if directory == top:
                break
    return tmp_path


@pytest.fixture(scope="session")
def pg() -> Iterator[PgCluster]:
    bindir = find_bindir()
    if bindir is None:
        pytest.skip(
            "PostgreSQL server binaries not found (no /usr/lib/postgresql/15/bin/initdb, "
            "no pg_config --bindir): install postgresql-15 or set PG_BINDIR"
        )
    cluster = start_test_cluster(bindir)
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(autouse=True)
def _pg_back_up(request: pytest.FixtureRequest) -> Iterator[None]:
    # A test that stops the server must not break the tests after it.
    yield
    if "pg" in request.fixturenames:
        cluster = request.getfixturevalue("pg")
        cluster.ensure_running()


@pytest.fixture
def pooler(pg: PgCluster) -> Iterator[PoolerFactory]:
    pg.ensure_running()
    factory = PoolerFactory(pg)
    try:
        yield factory
    finally:
        factory.cleanup()
