"""The command line, the configuration file as the operator sees it, logging and signals.

Everything runs the real pooler process against a real PostgreSQL and talks to it with psql
and psycopg.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

import pgusher
from support import PgCluster, PoolerFactory, PoolerProc, run_psql
from support.pooler import REPO_ROOT, user_args

USERS = {
    "postgres": "postgres",
    "scram_user": "scram_pass",
    "md5_user": "md5_pass",
    "plain_user": "plain_pass",
}

# "2025-01-01 12:00:00.123 UTC [1234] " - PgBouncer's line prefix.
STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} UTC \[(?P<pid>\d+)\]"
LOG_LINE = re.compile(rf"^{STAMP} (LOG|DEBUG|NOISE|WARNING|ERROR|FATAL) ", re.M)


# --------------------------------------------------------------------------- helpers


def py_env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(REPO_ROOT / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_pgusher(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """``python -m pgusher ARGS`` to completion, stdout and stderr kept apart (as root, with
    ``-u postgres`` unless ARGS name a user)."""
    return subprocess.run(
        [sys.executable, "-m", "pgusher", *user_args(args), *args],
        capture_output=True,
        text=True,
        env=py_env(),
        stdin=subprocess.DEVNULL,
        timeout=timeout,
        check=False,
    )


def wait_for(pred: Callable[[], object], timeout: float = 5.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def logfile(proc: PoolerProc) -> str:
    try:
        return Path(proc.log_path).read_text(errors="replace")
    except OSError:
        return ""


def output(proc: PoolerProc) -> str:
    """What the pooler wrote to stdout/stderr."""
    try:
        return Path(proc.out_path).read_text(errors="replace")
    except OSError:
        return ""


def wait_log(proc: PoolerProc, pattern: str, timeout: float = 5.0) -> re.Match[str]:
    rx = re.compile(pattern, re.M)
    found: list[re.Match[str]] = []

    def check() -> bool:
        m = rx.search(logfile(proc))
        if m:
            found.append(m)
        return m is not None

    assert wait_for(check, timeout), f"no log line matching {pattern!r}:\n{logfile(proc)}"
    return found[0]


def tcp_refused(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return False
    except OSError:
        return True


def unix_refused(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        try:
            s.connect(path)
        except OSError:
            return True
        return False


def unix_socket(proc: PoolerProc) -> str:
    return os.path.join(proc.socket_dir, f".s.PGSQL.{proc.port}")


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie nobody reaped counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def connect(proc: PoolerProc, user: str = "scram_user", **kw: object) -> psycopg.Connection:
    kw.setdefault("connect_timeout", 5)
    return psycopg.connect(proc.dsn(user, USERS[user]), prepare_threshold=None, **kw)


def sections(
    pooler: PoolerFactory,
    settings: Mapping[str, str] | None = None,
    databases: Mapping[str, str] | None = None,
) -> dict[str, dict[str, str]]:
    return {
        "databases": dict(databases if databases is not None else pooler.databases()),
        "pgbouncer": dict(settings or {}),
    }


def line_of(path: str, needle: str) -> int:
    """1-based number of the line of ``path`` holding ``needle``."""
    for number, text in enumerate(Path(path).read_text().splitlines(), start=1):
        if needle in text:
            return number
    raise AssertionError(f"{needle!r} not in {path}")


def server_pids(pg: PgCluster, user: str) -> set[int]:
    out = pg.sql(
        "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' "
        f"AND usename = '{user}' AND pid <> pg_backend_pid()",
        "postgres",
    )
    return {int(x) for x in out.split()}


def wait_no_backends(pg: PgCluster, user: str) -> None:
    # Backends of poolers killed by earlier tests may take a moment to go away.
    assert wait_for(lambda: pg.connections(user=user) == 0, 10, 0.2), "stale backends remain"


# --------------------------------------------------------------------------- 1. flags


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_flag(flag: str) -> None:
    res = run_pgusher(flag)
    assert res.returncode == 0, res.stderr
    first = res.stdout.splitlines()[0]
    assert first == f"pgusher {pgusher.__version__}"
    assert re.fullmatch(r"pgusher \d+\.\d+\.\d+\S*", first)
    meta = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert pgusher.__version__ == meta["project"]["version"]


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_flag(flag: str) -> None:
    res = run_pgusher(flag)
    assert res.returncode == 0, res.stderr
    text = res.stdout
    for opt in ("-d", "-q", "-v", "-u", "-V", "-h"):
        assert re.search(rf"(^|[\s\[,]){re.escape(opt)}\b", text, re.M), f"{opt} not in help"
    assert "usage" in text.lower()


def test_no_config_is_an_error() -> None:
    res = run_pgusher()
    assert res.returncode != 0
    assert "config" in res.stderr.lower()
    assert res.stdout == ""


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.ini"
    res = run_pgusher(str(missing))
    assert res.returncode != 0
    assert str(missing) in res.stderr


def test_console_script_entry_point() -> None:
    """The ``pgusher`` script declared in pyproject resolves to a working main()."""
    meta = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    target = meta["project"]["scripts"]["pgusher"]
    module, func = target.split(":")
    code = f"import sys; from {module} import {func} as m; sys.exit(m())"
    res = subprocess.run(
        [sys.executable, "-c", code, "--version"],
        capture_output=True,
        text=True,
        env=py_env(),
        timeout=30,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0] == f"pgusher {pgusher.__version__}"
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=py_env(),
        timeout=30,
        check=False,
    )
    assert res.returncode != 0
    assert "config" in res.stderr.lower()


def test_user_flag_switches_user(pooler: PoolerFactory) -> None:
    if os.geteuid() != 0:
        pytest.skip("-u needs root")
    entry = pwd.getpwnam("nobody")
    # The unix socket is created after the switch: give it a directory nobody may write.
    sockdir = tempfile.mkdtemp(prefix="pgusher-u-")
    try:
        os.chmod(sockdir, 0o755)
        os.chown(sockdir, entry.pw_uid, entry.pw_gid)
        proc = pooler(
            sections(pooler, {"unix_socket_dir": sockdir}),
            userlist=USERS,
            args=["-u", "nobody"],
        )
        assert proc.pid is not None
        # The switch follows the binding of every listener, a moment after TCP accepts.
        deadline = time.monotonic() + 5
        while True:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            uids = re.search(r"^Uid:\s+(.*)$", status, re.M)
            assert uids is not None
            if {int(x) for x in uids.group(1).split()} == {entry.pw_uid}:
                break
            assert time.monotonic() < deadline, status
            time.sleep(0.05)
        res = run_psql(proc.dsn("scram_user", "scram_pass"), "SELECT current_user")
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip() == "scram_user"
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)


# --------------------------------------------------------------------------- 2. config file


def test_bad_value_names_file_line_key_value(tmp_path: Path) -> None:
    ini = tmp_path / "bad.ini"
    ini.write_text(
        "[databases]\n"
        "app = host=127.0.0.1 dbname=app\n"
        "\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        "listen_port = 1\n"
        "default_pool_size = lots\n"
    )
    res = run_pgusher(str(ini))
    assert res.returncode != 0
    err = res.stderr
    assert f"{ini}:7" in err, err
    assert "default_pool_size" in err
    assert "lots" in err


def test_bad_value_in_included_file_names_that_file(tmp_path: Path) -> None:
    inc = tmp_path / "more.ini"
    inc.write_text("; tuning\npool_mode = sometimes\n")
    ini = tmp_path / "main.ini"
    ini.write_text("[databases]\napp = host=127.0.0.1 dbname=app\n[pgbouncer]\n%include more.ini\n")
    res = run_pgusher(str(ini))
    assert res.returncode != 0
    assert f"{inc}:2" in res.stderr, res.stderr
    assert "pool_mode" in res.stderr
    assert "sometimes" in res.stderr


def test_unknown_key_warns_and_starts(pooler: PoolerFactory) -> None:
    proc = pooler(
        "[databases]\n"
        f"app = host=127.0.0.1 port={pooler.pg.port} dbname=app\n"
        "[pgbouncer]\n"
        "listen_addr = {listen_addr}\n"
        "listen_port = {listen_port}\n"
        "unix_socket_dir = {socket_dir}\n"
        "logfile = {logfile}\n"
        "auth_file = {auth_file}\n"
        "frobnicate_level = 11\n",
        userlist=USERS,
    )
    lineno = line_of(proc.ini_path, "frobnicate_level")
    m = wait_log(proc, rf"^{STAMP} WARNING .*{re.escape(proc.ini_path)}:{lineno}\b.*$")
    assert "frobnicate_level" in m.group(0)
    res = run_psql(proc.dsn("postgres", "postgres"), "SELECT 6 * 7")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "42"


def test_include_databases_section(pooler: PoolerFactory, tmp_path: Path) -> None:
    workdir = tmp_path / "pooler"
    workdir.mkdir()
    (workdir / "dbs.ini").write_text(
        f"[databases]\nincdb = host=127.0.0.1 port={pooler.pg.port} dbname=app\n"
    )
    proc = pooler(
        "[pgbouncer]\n"
        "listen_addr = {listen_addr}\n"
        "listen_port = {listen_port}\n"
        "unix_socket_dir = {socket_dir}\n"
        "logfile = {logfile}\n"
        "auth_file = {auth_file}\n"
        "%include dbs.ini\n",
        userlist=USERS,
        workdir=str(workdir),
    )
    res = run_psql(proc.dsn("scram_user", "scram_pass", "incdb"), "SELECT current_database()")
    assert res.returncode == 0, res.stderr + proc.log_text()
    assert res.stdout.strip() == "app"
    # Only the included entry exists: the name 'app' is not configured.
    res = run_psql(proc.dsn("scram_user", "scram_pass", "app"), "SELECT 1")
    assert res.returncode != 0
    assert "app" in res.stderr


# --------------------------------------------------------------------------- 3. daemon


def test_daemon_mode_with_pidfile(pooler: PoolerFactory) -> None:
    proc = pooler(sections(pooler), userlist=USERS, args=["-d"])
    assert proc.proc is not None
    # The process we started returns at once; the daemon carries on.
    assert proc.proc.wait(10) == 0
    assert proc.pidfile is not None
    pid = int(Path(proc.pidfile).read_text().split()[0])
    assert pid != proc.proc.pid
    assert pid_alive(pid)
    # The daemon logs to the logfile under its own pid, and nothing to the old stderr.
    wait_log(proc, rf"^\d{{4}}-.* UTC \[{pid}\] LOG ")
    res = run_psql(proc.dsn("postgres", "postgres"), "SELECT 'via daemon'")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "via daemon"
    assert not LOG_LINE.search(output(proc))

    os.kill(pid, signal.SIGTERM)
    assert wait_for(lambda: not pid_alive(pid), 10), "daemon still running after SIGTERM"
    assert wait_for(lambda: not os.path.exists(proc.pidfile or ""), 5), "pidfile left behind"
    assert tcp_refused(proc.port)


def test_daemon_refuses_to_start_over_live_pidfile(pooler: PoolerFactory) -> None:
    """Like PgBouncer, a second ``-d`` start with the pidfile of a running pooler fails
    up front: non-zero exit status and a message on stderr, not a silent success."""
    proc = pooler(sections(pooler), userlist=USERS, args=["-d"])
    assert proc.pidfile is not None
    first = int(Path(proc.pidfile).read_text().split()[0])
    assert pid_alive(first)
    res = run_pgusher("-d", proc.ini_path, timeout=20)
    assert res.returncode != 0, f"second daemon start reported success: {res.stderr!r}"
    assert "pidfile" in res.stderr or proc.pidfile in res.stderr, res.stderr
    time.sleep(0.3)
    assert pid_alive(first)
    assert int(Path(proc.pidfile).read_text().split()[0]) == first


def test_daemon_mode_without_pidfile_fails(tmp_path: Path, pg: PgCluster) -> None:
    ini = tmp_path / "d.ini"
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    number = port.getsockname()[1]
    port.close()
    ini.write_text(
        f"[databases]\napp = host=127.0.0.1 port={pg.port} dbname=app\n"
        f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {number}\n"
        f"unix_socket_dir = {tmp_path}\n"
    )
    res = run_pgusher("-d", str(ini), timeout=20)
    assert res.returncode != 0
    assert "pidfile" in res.stderr
    # It must not have left a daemon behind listening on the port.
    time.sleep(0.3)
    assert tcp_refused(number)


# --------------------------------------------------------------------------- 4. logging


def psql_roundtrip(proc: PoolerProc) -> None:
    res = run_psql(proc.dsn("postgres", "postgres"), input="SELECT 1;\n\\q\n")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "1"


def test_log_lines_match_pgbouncer_format(pooler: PoolerFactory, pg: PgCluster) -> None:
    proc = pooler(sections(pooler), userlist=USERS)
    psql_roundtrip(proc)
    assert proc.proc is not None
    pid = proc.proc.pid
    login = wait_log(
        proc,
        rf"^{STAMP} LOG (?P<cid>C-0x[0-9a-f]+): app/postgres@(?P<addr>127\.0\.0\.1:\d+) "
        r"login attempt: db=app user=postgres tls=no$",
    )
    assert int(login.group("pid")) == pid
    cid, addr = login.group("cid"), login.group("addr")
    close = wait_log(
        proc,
        rf"^{STAMP} LOG {re.escape(cid)}: app/postgres@{re.escape(addr)} "
        r"closing because: client close request \(age=\d+s\)$",
    )
    assert int(close.group("pid")) == pid
    server = wait_log(
        proc,
        rf"^{STAMP} LOG S-0x[0-9a-f]+: app/postgres@127\.0\.0\.1:{pg.port} "
        r"new connection to server \(from 127\.0\.0\.1:\d+\)$",
    )
    assert int(server.group("pid")) == pid
    # Every line of the logfile has the PgBouncer prefix; DEBUG only with -v.
    text = logfile(proc)
    for line in text.splitlines():
        assert LOG_LINE.match(line + " "), f"unexpected log line: {line!r}"
    assert " DEBUG " not in text
    # Without -q the same lines go to stderr as well.
    assert "login attempt: db=app user=postgres tls=no" in output(proc)


def test_quiet_flag_keeps_logfile(pooler: PoolerFactory) -> None:
    proc = pooler(sections(pooler), userlist=USERS, args=["-q"])
    psql_roundtrip(proc)
    wait_log(proc, r"closing because: client close request")
    assert "login attempt: db=app user=postgres tls=no" in logfile(proc)
    assert not LOG_LINE.search(output(proc)), output(proc)


def test_verbose_flag_adds_debug_lines(pooler: PoolerFactory) -> None:
    proc = pooler(sections(pooler), userlist=USERS, args=["-v"])
    psql_roundtrip(proc)
    wait_log(proc, r"closing because: client close request")
    assert re.search(rf"^{STAMP} DEBUG ", logfile(proc), re.M), logfile(proc)


def test_log_connections_off(pooler: PoolerFactory) -> None:
    proc = pooler(sections(pooler, {"log_connections": "0"}), userlist=USERS)
    psql_roundtrip(proc)
    # Disconnections are still logged, so the session did go through the pooler.
    wait_log(proc, r"C-0x[0-9a-f]+: app/postgres@.* closing because: client close request")
    text = logfile(proc)
    assert "login attempt" not in text
    assert "new connection to server" not in text


# --------------------------------------------------------------------------- 5. signals


def test_sighup_applies_pool_size_and_pool_mode(pooler: PoolerFactory, pg: PgCluster) -> None:
    wait_no_backends(pg, "scram_user")
    db = f"host=127.0.0.1 port={pg.port} dbname=app"
    proc = pooler(
        sections(pooler, {"default_pool_size": "1"}, {"app": f"{db} pool_mode=session"}),
        userlist=USERS,
    )
    conn = connect(proc, autocommit=True)
    try:
        before = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert pg.connections(user="scram_user") == 1

        proc.write_ini(
            sections(pooler, {"default_pool_size": "3"}, {"app": f"{db} pool_mode=transaction"})
        )
        proc.reload()
        wait_log(proc, r"SIGHUP")
        time.sleep(0.3)

        # The existing client is not dropped and keeps its server until its transaction ends.
        assert conn.execute("SELECT pg_backend_pid()").fetchone() == before

        # Pool size 3 and transaction mode: the idle client above holds no server, so three
        # one-second transactions run side by side on three server connections.
        others = [connect(proc) for _ in range(3)]
        try:
            started = threading.Barrier(4)

            def work(c: psycopg.Connection) -> None:
                started.wait(5)
                with c.transaction():
                    c.execute("SELECT pg_sleep(1)")

            peak = 0
            t0 = time.monotonic()
            with ThreadPoolExecutor(3) as ex:
                futs = [ex.submit(work, c) for c in others]
                started.wait(5)
                while not all(f.done() for f in futs):
                    peak = max(peak, pg.connections(user="scram_user"))
                    time.sleep(0.05)
                for f in futs:
                    f.result()
            elapsed = time.monotonic() - t0
            assert peak == 3, f"at most {peak} server connections seen"
            assert elapsed < 1.9, f"transactions were serialised ({elapsed:.2f}s)"
            assert pg.connections(user="scram_user") <= 3
            # Four clients connected, three servers: fine in transaction mode.
            assert conn.execute("SELECT 1").fetchone() == (1,)
            for c in others:
                assert c.execute("SELECT 2").fetchone() == (2,)
        finally:
            for c in others:
                c.close()
    finally:
        conn.close()
    assert proc.proc is not None and proc.proc.poll() is None


def test_sighup_with_broken_ini_keeps_old_config(pooler: PoolerFactory, pg: PgCluster) -> None:
    proc = pooler(sections(pooler, {"pool_mode": "transaction"}), userlist=USERS)
    conn = connect(proc, autocommit=True)
    try:
        assert conn.execute("SELECT current_database()").fetchone() == ("app",)
        # The new file would point 'app' at another database, but has a bad value below.
        Path(proc.ini_path).write_text(
            "[databases]\n"
            f"app = host=127.0.0.1 port={pg.port} dbname=postgres\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {proc.port}\n"
            f"unix_socket_dir = {proc.socket_dir}\nlogfile = {proc.log_path}\n"
            f"auth_file = {proc.auth_file}\n"
            "default_pool_size = lots\n"
        )
        proc.reload()
        m = wait_log(proc, r"^.*reload.*failed.*$")
        lineno = line_of(proc.ini_path, "= lots")
        assert f"{proc.ini_path}:{lineno}" in m.group(0)
        assert "default_pool_size" in m.group(0)
        time.sleep(0.2)
        assert proc.proc is not None and proc.proc.poll() is None
        # Old configuration still in force, for the existing client and for new ones.
        assert conn.execute("SELECT current_database()").fetchone() == ("app",)
        res = run_psql(proc.dsn("scram_user", "scram_pass"), "SELECT current_database()")
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip() == "app"
        # Once the file is fixed, the next reload applies it.
        text = Path(proc.ini_path).read_text().replace("default_pool_size = lots", "")
        Path(proc.ini_path).write_text(text)
        proc.reload()
        assert wait_for(lambda: logfile(proc).count("SIGHUP") == 2, 5)
        time.sleep(0.3)
        res = run_psql(proc.dsn("scram_user", "scram_pass"), "SELECT current_database()")
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip() == "postgres"
    finally:
        conn.close()


def test_sigint_waits_for_open_transaction(pooler: PoolerFactory) -> None:
    proc = pooler(
        sections(pooler, {"pool_mode": "transaction", "default_pool_size": "2"}),
        userlist=USERS,
    )
    assert proc.proc is not None
    conn = connect(proc)  # not autocommit: the first statement opens a transaction
    try:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        proc.signal(signal.SIGINT)
        wait_log(proc, r"SIGINT")
        assert wait_for(lambda: tcp_refused(proc.port), 3), "still accepting connections"
        assert unix_refused(unix_socket(proc)), "still accepting unix connections"
        with pytest.raises(psycopg.OperationalError):
            connect(proc, connect_timeout=3).close()
        time.sleep(1.5)
        assert proc.proc.poll() is None, "exited with a transaction still open"
        # The open transaction goes on until it ends.
        assert conn.execute("SELECT 2").fetchone() == (2,)
        conn.commit()
        assert proc.wait_exit(5) == 0
    finally:
        conn.close()


def test_sigterm_waits_for_clients_to_leave(pooler: PoolerFactory) -> None:
    proc = pooler(
        sections(pooler, {"pool_mode": "transaction", "default_pool_size": "2"}),
        userlist=USERS,
    )
    assert proc.proc is not None
    conn = connect(proc, autocommit=True)
    try:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        proc.signal(signal.SIGTERM)
        wait_log(proc, r"SIGTERM")
        assert wait_for(lambda: tcp_refused(proc.port), 3), "still accepting connections"
        assert unix_refused(unix_socket(proc)), "still accepting unix connections"
        with pytest.raises(psycopg.OperationalError):
            connect(proc, connect_timeout=3).close()
        time.sleep(1.5)
        assert proc.proc.poll() is None, "exited while a client is connected"
        assert conn.execute("SELECT 42").fetchone() == (42,)
        with conn.transaction():
            assert conn.execute("SELECT 43").fetchone() == (43,)
    finally:
        conn.close()
    assert proc.wait_exit(5) == 0
    # The unix socket file goes away with the process.
    assert not os.path.exists(unix_socket(proc))


def test_sigterm_twice_exits_at_once(pooler: PoolerFactory) -> None:
    proc = pooler(sections(pooler, {"pool_mode": "transaction"}), userlist=USERS)
    assert proc.proc is not None
    conn = connect(proc, autocommit=True)
    try:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        proc.signal(signal.SIGTERM)
        wait_log(proc, r"SIGTERM")
        time.sleep(0.3)
        assert proc.proc.poll() is None
        proc.signal(signal.SIGTERM)
        proc.wait_exit(3)
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    finally:
        conn.close()


def test_sigquit_exits_at_once(pooler: PoolerFactory) -> None:
    proc = pooler(sections(pooler, {"pool_mode": "transaction"}), userlist=USERS, pidfile=True)
    assert proc.proc is not None and proc.pidfile is not None
    assert int(Path(proc.pidfile).read_text().split()[0]) == proc.proc.pid
    conn = connect(proc)
    try:
        conn.execute("SELECT 1")  # leaves a transaction open
        proc.signal(signal.SIGQUIT)
        proc.wait_exit(3)
        assert tcp_refused(proc.port)
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    finally:
        conn.close()
    assert not os.path.exists(proc.pidfile)


def test_sighup_reopens_logfile(pooler: PoolerFactory) -> None:
    """Log rotation: rename the file, SIGHUP, and the pooler writes to a new file."""
    proc = pooler(sections(pooler), userlist=USERS)
    psql_roundtrip(proc)
    wait_log(proc, r"closing because: client close request")
    rotated = proc.log_path + ".1"
    os.rename(proc.log_path, rotated)
    proc.reload()
    assert wait_for(lambda: os.path.exists(proc.log_path), 5), "logfile not reopened"
    psql_roundtrip(proc)
    wait_log(proc, r"login attempt: db=app user=postgres tls=no")
    assert "SIGHUP" in Path(rotated).read_text() + logfile(proc)
    assert "login attempt" not in Path(rotated).read_text().split("SIGHUP")[-1]


# --------------------------------------------------------------------------- 6. listen_addr


def test_unix_socket_only_when_listen_addr_unset(pooler: PoolerFactory, pg: PgCluster) -> None:
    proc = pooler(
        "[databases]\n"
        f"app = host=127.0.0.1 port={pg.port} dbname=app\n"
        "[pgbouncer]\n"
        "listen_port = {listen_port}\n"
        "unix_socket_dir = {socket_dir}\n"
        "logfile = {logfile}\n"
        "auth_file = {auth_file}\n",
        userlist=USERS,
        wait=False,
    )
    sock_path = os.path.join(proc.socket_dir, f".s.PGSQL.{proc.port}")
    assert wait_for(lambda: os.path.exists(sock_path), 10), proc.log_text()
    wait_log(proc, r"listening on unix:")
    res = run_psql(
        ["-h", proc.socket_dir, "-p", str(proc.port), "-U", "scram_user", "-d", "app"],
        "SELECT current_user",
        env={**os.environ, "PGPASSWORD": "scram_pass"},
    )
    assert res.returncode == 0, res.stderr + proc.log_text()
    assert res.stdout.strip() == "scram_user"
    assert tcp_refused(proc.port)
    assert "listening on 127.0.0.1" not in logfile(proc)
