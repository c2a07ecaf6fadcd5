"""Start-up as an operator sees it: root needs ``-u``, the fd limit line, and every reason not
to start (logfile, pidfile, port, configuration, TLS files, user) is one FATAL line and exit
status 1, never a traceback."""

from __future__ import annotations

import os
import pwd
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import PgCluster, PoolerFactory
from support.pg import free_port, service_user
from support.pooler import REPO_ROOT, user_args

STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} UTC \[\d+\]"
LINE = re.compile(rf"^{STAMP} (LOG|DEBUG|NOISE|WARNING|ERROR|FATAL) ")


def run(*args: str, switch: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT / "src"))
    extra = user_args(args) if switch else []
    return subprocess.run([sys.executable, "-m", "pgusher", *extra, *args],
                          capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL,
                          timeout=30, check=False)


def one_fatal(res: subprocess.CompletedProcess[str]) -> str:
    """The one FATAL line of a failed start; every other line on stderr is a log line."""
    assert res.returncode == 1, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    lines = [line for line in res.stderr.splitlines() if line]
    assert all(LINE.match(line) for line in lines), res.stderr
    fatal = [line for line in lines if " FATAL " in line]
    assert len(fatal) == 1, res.stderr
    return fatal[0].split(" FATAL ", 1)[1]


def write_ini(directory: Path, pg: PgCluster, port: int, **main: str) -> Path:
    """A complete configuration in ``directory``; ``main`` adds or overrides [pgbouncer] keys."""
    (directory / "userlist.txt").write_text('"postgres" "postgres"\n')
    keys = {"listen_addr": "127.0.0.1", "listen_port": str(port),
            "unix_socket_dir": str(directory), "auth_type": "trust",
            "auth_file": str(directory / "userlist.txt"), **main}
    text = (f"[databases]\napp = host={pg.host} port={pg.port} dbname=app\n[pgbouncer]\n"
            + "".join(f"{k} = {v}\n" for k, v in keys.items() if v))
    path = directory / "pgusher.ini"
    path.write_text(text)
    return path


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    os.chmod(tmp_path, 0o755)
    return tmp_path


def test_root_without_user_is_refused(pg: PgCluster, workdir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the refusal concerns root only")
    port = free_port()
    res = run(str(write_ini(workdir, pg, port)), switch=False)
    assert one_fatal(res).startswith("pgusher should not run as root")
    with socket.socket() as probe:  # it never listened
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_unknown_user_to_switch_to(pg: PgCluster, workdir: Path) -> None:
    res = run("-u", "no_such_unix_user", str(write_ini(workdir, pg, free_port())))
    assert one_fatal(res) == "could not find user 'no_such_unix_user' to switch to"


def test_user_flag_drops_root_after_binding_and_logs_fd_limit(pooler: PoolerFactory) -> None:
    """The fixture starts pgusher as root with ``-u postgres``: it serves as postgres, and
    logs the fd limit line PgBouncer logs, with PgBouncer's estimate of the fds it needs."""
    databases = {**pooler.databases(),
                 "fixed": f"host={pooler.pg.host} port={pooler.pg.port} dbname=app "
                          "user=postgres pool_size=3"}
    proc = pooler({"databases": databases,
                   "pgbouncer": {"auth_type": "trust", "max_client_conn": "50",
                                 "default_pool_size": "7"}},
                  {"postgres": "postgres", "other": "x"})
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # the pooler inherits ours
    deadline = time.monotonic() + 5
    while "process up" not in proc.log_text():
        assert time.monotonic() < deadline, proc.log_text()
        time.sleep(0.05)
    # 50 clients + 10 spare + app's 7 per user (2 users) + fixed's 3 (it names its user).
    want = (f"LOG kernel file descriptor limit: {soft} (hard: {hard}); max_client_conn: 50, "
            "max expected fd use: 77")
    assert want in proc.log_text()
    user = service_user()
    if user is not None:
        assert proc.pid is not None
        status = Path(f"/proc/{proc.pid}/status").read_text()
        uid = re.search(r"^Uid:\s+(\d+)\s+(\d+)", status, re.M)
        assert uid is not None
        assert {int(uid.group(1)), int(uid.group(2))} == {pwd.getpwnam(user).pw_uid}


def test_logfile_that_cannot_be_opened(pg: PgCluster, workdir: Path) -> None:
    missing = workdir / "no-such-dir" / "pgusher.log"
    res = run(str(write_ini(workdir, pg, free_port(), logfile=str(missing))))
    assert one_fatal(res) == f"Cannot open logfile: '{missing}': No such file or directory"


def test_pidfile_that_cannot_be_written(pg: PgCluster, workdir: Path) -> None:
    missing = workdir / "no-such-dir" / "pgusher.pid"
    res = run(str(write_ini(workdir, pg, free_port(), pidfile=str(missing))))
    assert one_fatal(res) == f"could not open pidfile '{missing}': No such file or directory"


def test_pidfile_of_a_live_process(pg: PgCluster, workdir: Path) -> None:
    pidfile = workdir / "pgusher.pid"
    pidfile.write_text(f"{os.getpid()}\n")  # this test process: alive
    res = run(str(write_ini(workdir, pg, free_port(), pidfile=str(pidfile))))
    assert one_fatal(res) == (f"pidfile '{pidfile}' exists, another instance running? "
                              f"(pid {os.getpid()})")
    assert pidfile.read_text() == f"{os.getpid()}\n"


@pytest.mark.parametrize("workers", ["1", "2"])
def test_port_in_use(pg: PgCluster, workdir: Path, workers: str) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        ini = write_ini(workdir, pg, port)
        with ini.open("a") as fh:
            fh.write(f"[pgusher]\nworkers = {workers}\n")
        res = run(str(ini))
    assert one_fatal(res) == f"cannot listen on 127.0.0.1:{port}: bind(): Address already in use"
    assert not (workdir / f".s.PGSQL.{port}").exists()


def test_unix_socket_in_use(pg: PgCluster, pooler: PoolerFactory, workdir: Path) -> None:
    proc = pooler({"databases": pooler.databases(), "pgbouncer": {"auth_type": "trust"}})
    res = run(str(write_ini(workdir, pg, proc.port, unix_socket_dir=proc.socket_dir)))
    path = os.path.join(proc.socket_dir, f".s.PGSQL.{proc.port}")
    assert one_fatal(res) == f"unix socket {path} is in use, cannot continue"
    assert proc.is_running()


def test_bad_configuration_value(pg: PgCluster, workdir: Path) -> None:
    ini = write_ini(workdir, pg, free_port(), pool_mode="sometimes")
    message = one_fatal(run(str(ini)))
    assert message.startswith(f"{ini}:")
    assert "pool_mode" in message and "sometimes" in message


def test_missing_configuration_file(workdir: Path) -> None:
    assert str(workdir / "nope.ini") in one_fatal(run(str(workdir / "nope.ini")))


def test_unreadable_tls_files(pg: PgCluster, workdir: Path) -> None:
    key = workdir / "missing.key"
    ini = write_ini(workdir, pg, free_port(), client_tls_sslmode="require",
                    client_tls_key_file=str(key), client_tls_cert_file=str(workdir / "x.crt"))
    message = one_fatal(run(str(ini)))
    assert message.startswith("client_tls_")
    assert "cannot load" in message and str(workdir) in message


def test_daemon_without_pidfile(pg: PgCluster, workdir: Path) -> None:
    res = run("-d", str(write_ini(workdir, pg, free_port())))
    assert one_fatal(res) == "daemon needs pidfile configured"


def test_user_setting_is_enough_as_root(pg: PgCluster, workdir: Path) -> None:
    """``user =`` in the file names whom to become, as ``-u`` does."""
    user = service_user()
    if user is None:
        pytest.skip("the refusal concerns root only")
    port = free_port()
    ini = write_ini(workdir, pg, port, user=user, unix_socket_dir="")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT / "src"))
    proc = subprocess.Popen([sys.executable, "-m", "pgusher", str(ini)], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        wanted = str(pwd.getpwnam(user).pw_uid)
        while True:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            uids = status.split("Uid:")[1].split("\n")[0].split()
            if set(uids) == {wanted}:
                break
            assert time.monotonic() < deadline, status
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0 and "FATAL" not in out, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
