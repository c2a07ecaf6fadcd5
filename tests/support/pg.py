"""A throwaway PostgreSQL cluster for tests and benchmarks.

The cluster lives in a temporary directory, listens on 127.0.0.1 and on a
unix socket in that directory, and is driven with ``pg_ctl``.  When the
calling process is root, the server-side programs (initdb, pg_ctl, postgres)
run as the ``postgres`` system user because they refuse to run as root;
client programs (psql, pgbench) run as the caller.
"""

from __future__ import annotations

import glob
import os
import pwd
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "NOFILE_TARGET",
    "PASSWORDS",
    "TEST_HBA",
    "TRUST_HBA",
    "PgCluster",
    "as_user_kwargs",
    "chown_tree",
    "find_bindir",
    "free_port",
    "libpq_dsn",
    "raise_nofile_limit",
    "service_user",
    "start_test_cluster",
]

# Passwords of the roles created by start_test_cluster().  None: no password.
PASSWORDS: dict[str, str | None] = {
    "postgres": "postgres",
    "scram_user": "scram_pass",
    "md5_user": "md5_pass",
    "plain_user": "plain_pass",
    "trust_user": None,
}

TEST_HBA = """\
local all all trust
host all trust_user 127.0.0.1/32 trust
host all md5_user 127.0.0.1/32 md5
host all plain_user 127.0.0.1/32 password
host all all 127.0.0.1/32 scram-sha-256
"""

TRUST_HBA = """\
local all all trust
host all all 127.0.0.1/32 trust
"""

NOFILE_TARGET = 65536

DEFAULT_SETTINGS: dict[str, str] = {
    "max_connections": "300",
    "shared_buffers": "16MB",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "password_encryption": "scram-sha-256",
    "logging_collector": "off",
    "log_min_messages": "warning",
    "max_wal_size": "1GB",
    "checkpoint_timeout": "30min",
}


# --------------------------------------------------------------------------- helpers


def find_bindir() -> str | None:
    """Directory holding initdb/pg_ctl/postgres/psql/pgbench, or None.

    Order: $PG_BINDIR, /usr/lib/postgresql/15/bin, ``pg_config --bindir``,
    then the newest /usr/lib/postgresql/*/bin.
    """
    candidates: list[str] = []
    env = os.environ.get("PG_BINDIR")
    if env:
        candidates.append(env)
    candidates.append("/usr/lib/postgresql/15/bin")
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=False
            )
            if out.returncode == 0 and out.stdout.strip():
                candidates.append(out.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass

    def version_key(path: str) -> float:
        try:
            return float(Path(path).parent.name)
        except ValueError:
            return 0.0

    candidates.extend(sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version_key, reverse=True))
    for cand in candidates:
        if os.access(os.path.join(cand, "initdb"), os.X_OK) and os.access(
            os.path.join(cand, "pg_ctl"), os.X_OK
        ):
            return cand
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def raise_nofile_limit(target: int = NOFILE_TARGET) -> int:
    """Raise RLIMIT_NOFILE of this process (inherited by children); return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= target:
        return soft
    if hard != resource.RLIM_INFINITY and hard < target:
        try:  # only root may raise the hard limit
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, target))
            return target
        except (ValueError, OSError):
            pass
    new_soft = target if hard == resource.RLIM_INFINITY else min(target, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
    except (ValueError, OSError):
        return soft
    return new_soft


def service_user() -> str | None:
    """The user server programs must run as: 'postgres' when we are root, else None."""
    if os.geteuid() != 0:
        return None
    return os.environ.get("PGUSHER_TEST_SERVICE_USER", "postgres")


def as_user_kwargs(user: str | None) -> dict[str, Any]:
    """subprocess.Popen keyword arguments that drop privileges to ``user``.

    Unlike runuser/su this keeps the resource limits of the calling process.
    """
    if user is None:
        return {}
    pw = pwd.getpwnam(user)
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def user_env(user: str | None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    if user is not None:
        pw = pwd.getpwnam(user)
        env["HOME"] = pw.pw_dir
        env["USER"] = env["LOGNAME"] = user
    return env


def chown_tree(path: str | os.PathLike[str], user: str | None) -> None:
    if user is None:
        return
    pw = pwd.getpwnam(user)
    os.chown(path, pw.pw_uid, pw.pw_gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), pw.pw_uid, pw.pw_gid)


def _quote_conninfo(value: str) -> str:
    if value and all(c not in value for c in " '\\\t\n"):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def libpq_dsn(**params: object) -> str:
    """key=value connection string; None values are left out."""
    return " ".join(
        f"{key}={_quote_conninfo(str(val))}" for key, val in params.items() if val is not None
    )


def _sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _children(pid: int) -> list[int]:
    """PIDs whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: the fields follow the last ')'.
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and fields[1] == str(pid):
            found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    """True while ``pid`` exists, zombies included: PostgreSQL's lock file check counts them."""
    return os.path.exists(f"/proc/{pid}")


# --------------------------------------------------------------------------- cluster


class PgError(RuntimeError):
    pass


class PgCluster:
    """A PostgreSQL cluster in a temporary directory.

    Attributes: host, port, socket_dir, datadir, bindir, basedir, log_path.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        bindir: str | None = None,
        *,
        port: int | None = None,
        hba: str = TEST_HBA,
        settings: Mapping[str, str] | None = None,
        basedir: str | None = None,
        superuser_password: str | None = "postgres",
    ) -> None:
        found = bindir or find_bindir()
        if found is None:
            raise PgError("no PostgreSQL binaries found (initdb/pg_ctl)")
        self.bindir: str = found
        self.port: int = port or free_port()
        self.hba = hba
        self.settings = dict(DEFAULT_SETTINGS)
        if settings:
            self.settings.update(settings)
        self.superuser_password = superuser_password
        self.run_as = service_user()
        self.basedir = basedir or tempfile.mkdtemp(prefix="pgusher-pg-")
        self.datadir = os.path.join(self.basedir, "data")
        self.socket_dir = os.path.join(self.basedir, "sock")
        self.log_path = os.path.join(self.basedir, "postgres.log")
        self._initialized = False

    # ---- process plumbing

    def _bin(self, name: str) -> str:
        return os.path.join(self.bindir, name)

    def _run_server_tool(
        self, args: Sequence[str], *, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run initdb/pg_ctl as the service user with our (raised) limits."""
        raise_nofile_limit()
        proc = subprocess.run(
            list(args),
            cwd=self.basedir,
            env=user_env(self.run_as),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **as_user_kwargs(self.run_as),
        )
        if check and proc.returncode != 0:
            raise PgError(
                f"{' '.join(args)} failed with exit code {proc.returncode}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}\n"
                f"server log:\n{self.log_text()[-4000:]}"
            )
        return proc

    def log_text(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""

    # ---- lifecycle

    def initdb(self) -> None:
        os.makedirs(self.socket_dir, exist_ok=True)
        os.chmod(self.basedir, 0o755)
        chown_tree(self.basedir, self.run_as)
        args = [
            self._bin("initdb"),
            "-D", self.datadir,
            "-U", "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E", "UTF8",
            "--locale=C",
            "--no-sync",
        ]  # fmt: skip
        self._run_server_tool(args)
        conf = [
            "",
            "# test settings",
            f"listen_addresses = '{self.host}'",
            f"port = {self.port}",
            f"unix_socket_directories = '{self.socket_dir}'",
        ]
        conf += [f"{key} = '{val}'" for key, val in self.settings.items()]
        with open(os.path.join(self.datadir, "postgresql.conf"), "a") as f:
            f.write("\n".join(conf) + "\n")
        with open(os.path.join(self.datadir, "pg_hba.conf"), "w") as f:
            f.write(self.hba)
        chown_tree(self.datadir, self.run_as)
        self._initialized = True

    def start(self, timeout: float = 60) -> None:
        if not self._initialized:
            self.initdb()
        if not os.path.exists(self.log_path):
            Path(self.log_path).touch()
            chown_tree(self.log_path, self.run_as)
        self._run_server_tool(
            [self._bin("pg_ctl"), "start", "-D", self.datadir, "-l", self.log_path,
             "-w", "-t", str(int(timeout))],
            timeout=timeout + 10,
        )  # fmt: skip
        self.wait_ready(timeout)

    def stop(self, mode: str = "fast", timeout: float = 60) -> None:
        if not self.is_running():
            return
        self._run_server_tool(
            [self._bin("pg_ctl"), "stop", "-D", self.datadir, "-m", mode,
             "-w", "-t", str(int(timeout))],
            timeout=timeout + 10,
        )  # fmt: skip

    def restart(self, mode: str = "fast", timeout: float = 60) -> None:
        self.stop(mode=mode, timeout=timeout)
        self.start(timeout=timeout)

    def postmaster_pid(self) -> int | None:
        """PID of the running postmaster (from postmaster.pid), None when there is none."""
        try:
            return int(Path(self.datadir, "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def kill_postmaster(self, timeout: float = 30) -> None:
        """SIGKILL the postmaster, as a crash would, and wait until its children are gone.

        The children notice the postmaster's death and exit on their own (a backend after
        its current statement); a new start refuses to run while any is still attached to
        the old shared memory.
        """
        pid = self.postmaster_pid()
        if pid is None:
            raise PgError("no postmaster to kill")
        children = _children(pid)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        for proc in [pid, *children]:
            while _alive(proc):
                if time.monotonic() > deadline:
                    raise PgError(f"process {proc} of the killed postmaster is still running")
                time.sleep(0.01)

    def reload(self) -> None:
        self._run_server_tool([self._bin("pg_ctl"), "reload", "-D", self.datadir])

    def is_running(self) -> bool:
        if not self._initialized:
            return False
        proc = self._run_server_tool(
            [self._bin("pg_ctl"), "status", "-D", self.datadir], check=False, timeout=30
        )
        return proc.returncode == 0

    def ensure_running(self) -> None:
        if not self.is_running():
            self.start()

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            proc = subprocess.run(
                [self._bin("pg_isready"), "-q", "-h", self.socket_dir, "-p", str(self.port),
                 "-U", "postgres", "-d", "postgres"],
                capture_output=True, text=True, check=False, timeout=10,
            )  # fmt: skip
            if proc.returncode == 0:
                return
            last = proc.stdout + proc.stderr
            time.sleep(0.1)
        raise PgError(f"PostgreSQL not ready after {timeout}s: {last}\n{self.log_text()[-4000:]}")

    def destroy(self, keep: bool | None = None) -> None:
        """Stop the server (immediately) and remove the directory.

        The directory is kept when ``keep`` is true or $PGUSHER_KEEP_TMP is set.
        """
        try:
            if self._initialized:
                self._run_server_tool(
                    [self._bin("pg_ctl"), "stop", "-D", self.datadir, "-m", "immediate", "-w"],
                    check=False,
                    timeout=60,
                )
        finally:
            if keep is None:
                keep = bool(os.environ.get("PGUSHER_KEEP_TMP"))
            if not keep:
                shutil.rmtree(self.basedir, ignore_errors=True)

    # ---- clients

    def params(
        self,
        user: str = "postgres",
        password: str | None = None,
        dbname: str = "app",
        **kw: object,
    ) -> dict[str, object]:
        if password is None:
            password = PASSWORDS.get(user) if user != "postgres" else self.superuser_password
        params: dict[str, object] = {
            "host": self.host,
            "port": self.port,
            "user": user,
            "password": password,
            "dbname": dbname,
        }
        params.update(kw)
        return params

    def dsn(
        self,
        user: str = "postgres",
        password: str | None = None,
        dbname: str = "app",
        **kw: object,
    ) -> str:
        """libpq key=value string for a TCP connection (password defaults from PASSWORDS)."""
        return libpq_dsn(**self.params(user, password, dbname, **kw))

    def sql(self, query: str, dbname: str = "app", *, timeout: float = 120) -> str:
        """Run SQL as superuser over the unix socket with psql; return stdout.

        Output is unaligned, tuples only (``-At``); the trailing newline is stripped.
        Statements are sent one by one (so CREATE DATABASE etc. work).  Raises
        PgError carrying stderr when psql fails.
        """
        proc = subprocess.run(
            [self._bin("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-h", self.socket_dir, "-p", str(self.port), "-U", "postgres",
             "-d", dbname, "-f", "-"],
            input=query,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, "PGCONNECT_TIMEOUT": "10"},
        )  # fmt: skip
        if proc.returncode != 0:
            raise PgError(f"psql failed ({proc.returncode}) running {query!r}:\n{proc.stderr}")
        return proc.stdout.rstrip("\n")

    def connections(self, user: str | None = None, dbname: str | None = None) -> int:
        """Client backends in pg_stat_activity, not counting the querying one."""
        where = "backend_type = 'client backend' AND pid <> pg_backend_pid()"
        if user is not None:
            where += f" AND usename = {_sql_literal(user)}"
        if dbname is not None:
            where += f" AND datname = {_sql_literal(dbname)}"
        return int(self.sql(f"SELECT count(*) FROM pg_stat_activity WHERE {where}", "postgres"))

    def create_role(
        self,
        name: str,
        password: str | None = None,
        *,
        encryption: str = "scram-sha-256",
        superuser: bool = False,
    ) -> None:
        attrs = "SUPERUSER LOGIN" if superuser else "LOGIN"
        pw = f" PASSWORD {_sql_literal(password)}" if password is not None else ""
        self.sql(
            f"SET password_encryption = {_sql_literal(encryption)};\n"
            f'CREATE ROLE "{name}" {attrs}{pw};',
            "postgres",
        )

    def create_database(self, name: str, owner: str = "postgres") -> None:
        self.sql(f'CREATE DATABASE "{name}" OWNER "{owner}";', "postgres")

    def grant_all(self, users: Iterable[str], dbname: str = "app") -> None:
        stmts = []
        for user in users:
            stmts.append(f'GRANT CONNECT, CREATE, TEMPORARY ON DATABASE "{dbname}" TO "{user}";')
            stmts.append(f'GRANT USAGE, CREATE ON SCHEMA public TO "{user}";')
        self.sql("\n".join(stmts), dbname)

    def __repr__(self) -> str:
        return f"<PgCluster {self.host}:{self.port} {self.datadir}>"


def start_test_cluster(bindir: str | None = None) -> PgCluster:
    """Cluster with the test roles (see PASSWORDS / TEST_HBA) and database ``app``."""
    cluster = PgCluster(bindir)
    try:
        cluster.start()
        cluster.sql(
            "SET password_encryption = 'scram-sha-256';\nALTER ROLE postgres PASSWORD 'postgres';",
            "postgres",
        )
        cluster.create_role("scram_user", "scram_pass")
        cluster.create_role("md5_user", "md5_pass", encryption="md5")
        cluster.create_role("plain_user", "plain_pass")
        cluster.create_role("trust_user")
        cluster.create_database("app")
        cluster.grant_all([u for u in PASSWORDS if u != "postgres"])
    except BaseException:
        cluster.destroy()
        raise
    return cluster
