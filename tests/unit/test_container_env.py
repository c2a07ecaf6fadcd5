"""The container entrypoint's translation of PGUSHER_* variables into an ini file, read back
by the real configuration loader."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgusher.config import ConfigError, load_config
from pgusher.container import ini_from_env


def load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "generated.ini"
    path.write_text(text)
    return load_config(str(path))


def test_settings_databases_and_userlist(tmp_path: Path) -> None:
    env = {
        "PGUSHER_DATABASE_APP": "host=db port=5432 dbname=app",
        "PGUSHER_DATABASES": "reports = host=db2 dbname=r pool_size=3\n* = host=db",
        "PGUSHER_USERS": "batch = pool_mode=session",
        "PGUSHER_POOL_MODE": "statement",
        "PGUSHER_DEFAULT_POOL_SIZE": "7",
        "PGUSHER_WORKERS": "2",
        "PGUSHER_USERLIST": '"app" "secret"',
        "HOME": "/root",  # not ours: ignored
    }
    text = ini_from_env(env, mounted=None, userlist_path=str(tmp_path / "users.txt"))
    config = load(tmp_path, text)
    s = config.settings  # type: ignore[attr-defined]
    assert s.pool_mode == "statement" and s.default_pool_size == 7
    assert s.auth_file == str(tmp_path / "users.txt")
    # Container defaults where no variable says otherwise.
    assert s.listen_addr == "*" and s.listen_port == 6432 and s.unix_socket_dir == ""
    extra = config.pgusher  # type: ignore[attr-defined]
    assert extra.http_addr == "0.0.0.0" and extra.http_port == 9127 and extra.workers == "2"
    dbs = config.databases  # type: ignore[attr-defined]
    assert set(dbs) == {"app", "reports", "*"}
    assert dbs["app"].host == "db" and dbs["reports"].pool_size == 3
    assert config.users["batch"].pool_mode == "session"  # type: ignore[attr-defined]


def test_variables_override_a_mounted_ini(tmp_path: Path) -> None:
    mounted = tmp_path / "pgusher.ini"
    mounted.write_text("[databases]\napp = host=a\n[pgbouncer]\nlisten_port = 7000\n"
                       "pool_mode = session\n")
    text = ini_from_env({"PGUSHER_POOL_MODE": "transaction"}, mounted=str(mounted),
                        userlist_path="/run/pgusher/userlist.txt")
    assert f"%include {mounted}" in text
    s = load(tmp_path, text).settings  # type: ignore[attr-defined]
    assert s.pool_mode == "transaction"
    assert s.listen_port == 7000  # the mounted file's, not a container default
    assert not s.auth_file  # no PGUSHER_USERLIST: the file's own (none) stays


def test_unknown_variable_is_refused() -> None:
    with pytest.raises(ConfigError, match="PGUSHER_POOL_MOD: no setting pool_mod"):
        ini_from_env({"PGUSHER_POOL_MOD": "session"}, mounted=None, userlist_path="/x")


def test_bad_value_is_found_by_the_loader(tmp_path: Path) -> None:
    text = ini_from_env({"PGUSHER_POOL_MODE": "sometimes"}, mounted=None, userlist_path="/x")
    with pytest.raises(ConfigError, match="pool_mode"):
        load(tmp_path, text)
