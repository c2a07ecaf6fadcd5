"""The systemd units, run as systemd would run them: deploy/pgusher.service, and Debian's own
pgbouncer.service with only ExecStart pointing at pgusher.

There is no systemd in the test machine's container, so this does its part: it reads the
unit's [Service] section, starts ExecStart with NOTIFY_SOCKET (and
WATCHDOG_USEC when the unit has WatchdogSec) naming a datagram socket of the test, runs
ExecReload with $MAINPID, and stops the service with its KillSignal. ``Type=notify`` works
when READY=1 arrives, a reload is RELOADING=1 then READY=1, and the stop is STOPPING=1 then
exit status 0. The unit's User is given as ``-u`` (the test's interpreter lives where only
root may read it), so the process still serves as that user, after binding.
"""

from __future__ import annotations

import configparser
import os
import pwd
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import PgCluster
from support.pg import free_port
from support.pooler import REPO_ROOT

DEBIAN_UNIT = Path("/lib/systemd/system/pgbouncer.service")
OWN_UNIT = REPO_ROOT / "deploy" / "pgusher.service"


def service_section(path: Path) -> dict[str, str]:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return dict(parser["Service"])


@pytest.fixture
def rundir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="pgusher-unit-"))
    os.chmod(directory, 0o777)
    yield directory
    for child in directory.iterdir():
        child.unlink()
    directory.rmdir()


def receive(manager: socket.socket, watchdogs: list[str]) -> str:
    """The next message other than WATCHDOG=1 (those are counted in ``watchdogs``)."""
    while True:
        message = manager.recv(4096).decode()
        if message != "WATCHDOG=1":
            return message
        watchdogs.append(message)


def run_unit(unit: Path, binary: str, pg: PgCluster, rundir: Path) -> None:
    service = service_section(unit)
    assert service["Type"] == "notify"
    command = shlex.split(service["ExecStart"])
    assert command[0] == binary, "only ExecStart's program is replaced"
    port = free_port()
    ini = rundir / "pgbouncer.ini"
    ini.write_text(f"[databases]\napp = host={pg.host} port={pg.port} dbname=app\n"
                   f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n"
                   f"unix_socket_dir = {rundir}\nauth_type = trust\n")
    argv = [sys.executable, "-m", "pgusher", *command[1:-1], str(ini)]
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager.bind(str(rundir / "notify"))
    os.chmod(rundir / "notify", 0o777)
    manager.settimeout(15)
    env = dict(os.environ, NOTIFY_SOCKET=str(rundir / "notify"),
               PYTHONPATH=str(REPO_ROOT / "src"))
    if "WatchdogSec" in service:
        env["WATCHDOG_USEC"] = str(int(service["WatchdogSec"]) * 1_000_000)
    user = service.get("User", "")
    if os.geteuid() == 0 and user:
        argv[3:3] = ["-u", user]
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        with manager:
            pings: list[str] = []
            ready = receive(manager, pings).split("\n")
            assert ready[0] == "READY=1", ready
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                pass
            if os.geteuid() == 0 and user:
                status = Path(f"/proc/{proc.pid}/status").read_text()
                uids = status.split("Uid:")[1].split("\n")[0].split()
                assert set(uids) == {str(pwd.getpwnam(user).pw_uid)}, status
            reload = service["ExecReload"].replace("$MAINPID", str(proc.pid))
            subprocess.run(shlex.split(reload), check=True, timeout=10)
            assert receive(manager, pings).startswith("RELOADING=1\nMONOTONIC_USEC=")
            assert receive(manager, pings) == "READY=1"
            stop = getattr(signal, service.get("KillSignal", "SIGTERM"))
            proc.send_signal(stop)
            assert receive(manager, pings) == "STOPPING=1"
            assert bool(pings) == ("WatchdogSec" in service)
            out, _ = proc.communicate(timeout=15)
            assert proc.returncode == 0, out
            assert "FATAL" not in out and "Traceback" not in out, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_own_unit(pg: PgCluster, rundir: Path) -> None:
    service = service_section(OWN_UNIT)
    assert service["Restart"] == "on-failure"
    run_unit(OWN_UNIT, "/usr/local/bin/pgusher", pg, rundir)


def test_debian_pgbouncer_unit_with_only_execstart_changed(pg: PgCluster, rundir: Path) -> None:
    if not DEBIAN_UNIT.exists():
        pytest.skip("Debian's pgbouncer package is not installed")
    run_unit(DEBIAN_UNIT, "/usr/sbin/pgbouncer", pg, rundir)
