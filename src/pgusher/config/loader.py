"""Turning an ini file into a validated :class:`Config`.

Strategy: two phases.  First the whole file (with its includes) is read by the lexer and
every line is parsed and validated into plain Python values, raising ConfigError - with file,
line, key and value - at the first bad one; only when everything is valid are the immutable
result objects assembled and returned, so a caller reloading configuration either gets a
complete new Config or keeps the old one untouched.  Apart from reading the files (done by
:func:`pgusher.config.ini.read_ini`), nothing here touches the outside world:
:func:`build_config` does all the work on already-read lines.

Per-database, per-user and per-peer connection strings are described by small tables that
map each accepted key to an attribute and a value parser, so one generic routine parses all
three sections and reports unknown keys uniformly.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from pgusher.config.connstr import ConnStrError, parse_connstr
from pgusher.config.ini import IniEntry, IniLine, IniSection, read_ini
from pgusher.config.settings import (
    PGUSHER_TABLE,
    POOL_MODES,
    SETTINGS_TABLE,
    PgusherSettings,
    Settings,
    SettingSpec,
    changed_settings,
    linked_names,
    parse_seconds,
)
from pgusher.errors import ConfigError

__all__ = [
    "Config",
    "DatabaseEntry",
    "PeerEntry",
    "UserEntry",
    "build_config",
    "load_config",
    "parse_database_entry",
    "parse_peer_entry",
    "parse_user_entry",
]

KNOWN_SECTIONS = ("pgbouncer", "databases", "users", "peers", "pgusher")
ADMIN_DB_NAME = "pgbouncer"
MAX_PEER_ID = 16383


# ---------------------------------------------------------------------------------------------
# Entry types
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class DatabaseEntry:
    """One ``[databases]`` line.  ``None`` means "not set here, use the global/default"."""

    name: str
    dbname: str | None = None  # None: same as the client-side name
    host: str | None = None  # None: Unix socket in unix_socket_dir
    port: int = 5432
    user: str | None = None
    password: str | None = None
    auth_user: str | None = None
    auth_query: str | None = None
    auth_dbname: str | None = None
    pool_size: int | None = None
    min_pool_size: int | None = None
    reserve_pool_size: int | None = None
    max_db_connections: int | None = None
    max_db_client_connections: int | None = None
    pool_mode: str | None = None
    connect_query: str | None = None
    client_encoding: str | None = None
    datestyle: str | None = None
    timezone: str | None = None
    application_name: str | None = None
    server_lifetime: float | None = None
    load_balance_hosts: str | None = None
    query_wait_timeout: float | None = None
    target_session_attrs: str | None = None
    raw: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class UserEntry:
    """One ``[users]`` line."""

    name: str
    pool_mode: str | None = None
    pool_size: int | None = None
    reserve_pool_size: int | None = None
    max_user_connections: int | None = None
    max_user_client_connections: int | None = None
    query_timeout: float | None = None
    idle_transaction_timeout: float | None = None
    client_idle_timeout: float | None = None
    query_wait_timeout: float | None = None
    transaction_timeout: float | None = None
    raw: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class PeerEntry:
    """One ``[peers]`` line: where to forward cancel requests for ``peer_id``."""

    peer_id: int
    host: str | None = None
    port: int = 6432
    pool_size: int | None = None
    raw: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Config:
    """A complete, validated configuration."""

    path: str
    settings: Settings
    databases: dict[str, DatabaseEntry]
    users: dict[str, UserEntry]
    peers: dict[int, PeerEntry]
    pgusher: PgusherSettings
    warnings: list[str]

    def reload_changes(self, new: Config) -> list[str]:
        """Names of ``[pgbouncer]`` keys whose values differ in ``new``."""
        return changed_settings(self.settings, new.settings, SETTINGS_TABLE)


# ---------------------------------------------------------------------------------------------
# Value parsers for connection-string keys (raise ValueError with a short reason)
# ---------------------------------------------------------------------------------------------


def _opt_str(raw: str) -> str | None:
    return raw if raw != "" else None


def _count(raw: str) -> int:
    text = raw.strip()
    if not text.isascii() or not text.isdigit():
        raise ValueError("expected a non-negative integer")
    return int(text)


def _port(raw: str) -> int:
    value = _count(raw)
    if not 1 <= value <= 65535:
        raise ValueError("port must be between 1 and 65535")
    return value


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        word = raw.strip().lower()
        if word not in choices:
            raise ValueError("expected one of: " + ", ".join(choices))
        return word

    return parse


def _seconds_or_unset(raw: str) -> float | None:
    if raw.strip() == "-1":
        return None
    return parse_seconds(raw)


_pool_mode = _choice(*POOL_MODES)

_Parser = Callable[[str], object]

# key in the connection string -> (attribute, parser)
_DATABASE_KEYS: dict[str, tuple[str, _Parser]] = {
    "dbname": ("dbname", _opt_str),
    "host": ("host", _opt_str),
    "port": ("port", _port),
    "user": ("user", _opt_str),
    "password": ("password", _opt_str),
    "auth_user": ("auth_user", _opt_str),
    "auth_query": ("auth_query", _opt_str),
    "auth_dbname": ("auth_dbname", _opt_str),
    "pool_size": ("pool_size", _count),
    "min_pool_size": ("min_pool_size", _count),
    "reserve_pool_size": ("reserve_pool_size", _count),
    "reserve_pool": ("reserve_pool_size", _count),
    "max_db_connections": ("max_db_connections", _count),
    "max_db_client_connections": ("max_db_client_connections", _count),
    "pool_mode": ("pool_mode", _pool_mode),
    "connect_query": ("connect_query", _opt_str),
    "client_encoding": ("client_encoding", _opt_str),
    "datestyle": ("datestyle", _opt_str),
    "timezone": ("timezone", _opt_str),
    "application_name": ("application_name", _opt_str),
    "server_lifetime": ("server_lifetime", parse_seconds),
    "load_balance_hosts": ("load_balance_hosts", _choice("round-robin", "disable")),
    "query_wait_timeout": ("query_wait_timeout", _seconds_or_unset),
    "target_session_attrs": ("target_session_attrs",
                             _choice("any", "read-write", "read-only", "primary", "standby")),
}

_USER_KEYS: dict[str, tuple[str, _Parser]] = {
    "pool_mode": ("pool_mode", _pool_mode),
    "pool_size": ("pool_size", _count),
    "reserve_pool_size": ("reserve_pool_size", _count),
    "max_user_connections": ("max_user_connections", _count),
    "max_user_client_connections": ("max_user_client_connections", _count),
    "query_timeout": ("query_timeout", parse_seconds),
    "idle_transaction_timeout": ("idle_transaction_timeout", parse_seconds),
    "client_idle_timeout": ("client_idle_timeout", parse_seconds),
    "query_wait_timeout": ("query_wait_timeout", _seconds_or_unset),
    "transaction_timeout": ("transaction_timeout", parse_seconds),
}

_PEER_KEYS: dict[str, tuple[str, _Parser]] = {
    "host": ("host", _opt_str),
    "port": ("port", _port),
    "pool_size": ("pool_size", _count),
}


def _parse_pairs(what: str, value: str, keys: Mapping[str, tuple[str, _Parser]],
                 where: str) -> tuple[dict[str, object], dict[str, str]]:
    """Parse a connection string against a key table -> (attribute values, raw pairs)."""
    prefix = f"{where}: " if where else ""
    try:
        pairs = parse_connstr(value)
    except ConnStrError as exc:
        raise ConfigError(f"{prefix}invalid connection string for {what}: {exc}") from None
    attrs: dict[str, object] = {}
    raw: dict[str, str] = {}
    for key, text in pairs:
        known = keys.get(key)
        if known is None:
            raise ConfigError(f"{prefix}unknown parameter '{key}' in {what}: '{text}'")
        attr, parse = known
        try:
            attrs[attr] = parse(text)
        except ValueError as exc:
            raise ConfigError(f"{prefix}invalid value for parameter '{key}' in {what}: "
                              f"'{text}' ({exc})") from None
        raw[key] = text
    return attrs, raw


def parse_database_entry(name: str, value: str, where: str = "") -> DatabaseEntry:
    """Build a DatabaseEntry from its name and connection string (``where`` = ``file:line``)."""
    attrs, raw = _parse_pairs(f"database '{name}'", value, _DATABASE_KEYS, where)
    return DatabaseEntry(name=name, raw=raw, **cast(dict[str, Any], attrs))


def parse_user_entry(name: str, value: str, where: str = "") -> UserEntry:
    """Build a UserEntry from a user name and its settings string."""
    attrs, raw = _parse_pairs(f"user '{name}'", value, _USER_KEYS, where)
    return UserEntry(name=name, raw=raw, **cast(dict[str, Any], attrs))


def parse_peer_entry(key: str, value: str, where: str = "") -> PeerEntry:
    """Build a PeerEntry from a ``[peers]`` key (the peer id) and connection string."""
    prefix = f"{where}: " if where else ""
    text = key.strip()
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_PEER_ID:
        raise ConfigError(f"{prefix}invalid peer id '{key}': expected an integer between 1 "
                          f"and {MAX_PEER_ID}")
    peer_id = int(text)
    attrs, raw = _parse_pairs(f"peer '{peer_id}'", value, _PEER_KEYS, where)
    return PeerEntry(peer_id=peer_id, raw=raw, **cast(dict[str, Any], attrs))


# ---------------------------------------------------------------------------------------------
# Whole-file assembly
# ---------------------------------------------------------------------------------------------


def _apply_setting(table: Mapping[str, SettingSpec], values: dict[str, object],
                   entry: IniEntry, section: str, warnings: list[str]) -> None:
    name = entry.key.lower()
    spec = table.get(name)
    if spec is None:
        warnings.append(f"{entry.where}: unknown parameter '{entry.key}' in section "
                        f"[{section}], ignored")
        return
    try:
        value = spec.parse(entry.value)
    except ValueError as exc:
        raise ConfigError(f"{entry.where}: invalid value for parameter '{name}': "
                          f"'{entry.value}' ({exc})") from None
    for linked in linked_names(table, name):
        values[linked] = value


def build_config(lines: list[IniLine], path: str) -> Config:
    """Validate already-read ini lines into a Config (no I/O).  ``path`` names the main file."""
    settings_values: dict[str, object] = {}
    pgusher_values: dict[str, object] = {}
    databases: dict[str, DatabaseEntry] = {}
    users: dict[str, UserEntry] = {}
    peers: dict[int, PeerEntry] = {}
    warnings: list[str] = []
    seen_main_section = False

    for line in lines:
        if isinstance(line, IniSection):
            if line.name == "pgbouncer":
                seen_main_section = True
            continue
        section = line.section
        if section is None:
            warnings.append(f"{line.where}: parameter '{line.key}' outside of any section, "
                            "ignored")
        elif section == "pgbouncer":
            _apply_setting(SETTINGS_TABLE, settings_values, line, section, warnings)
        elif section == "pgusher":
            _apply_setting(PGUSHER_TABLE, pgusher_values, line, section, warnings)
        elif section == "databases":
            if line.key == ADMIN_DB_NAME:
                raise ConfigError(f"{line.where}: database name '{line.key}' is reserved for "
                                  "the admin console")
            databases[line.key] = parse_database_entry(line.key, line.value, line.where)
        elif section == "users":
            users[line.key] = parse_user_entry(line.key, line.value, line.where)
        elif section == "peers":
            peer = parse_peer_entry(line.key, line.value, line.where)
            peers[peer.peer_id] = peer
        else:
            warnings.append(f"{line.where}: parameter '{line.key}' in unknown section "
                            f"[{section}], ignored")

    if not seen_main_section:
        raise ConfigError(f"{path}: section [pgbouncer] is missing")

    settings = Settings(**cast(dict[str, Any], settings_values))
    if settings.auth_dbname == ADMIN_DB_NAME:
        raise ConfigError(f'{path}: cannot use the reserved "{ADMIN_DB_NAME}" database as an '
                          "auth_dbname")
    if settings.conffile is None:
        settings = dataclasses.replace(settings, conffile=path)
    return Config(
        path=path,
        settings=settings,
        databases=databases,
        users=users,
        peers=peers,
        pgusher=PgusherSettings(**cast(dict[str, Any], pgusher_values)),
        warnings=warnings,
    )


def load_config(path: str) -> Config:
    """Read, validate and return the configuration in ``path``; ConfigError on any problem."""
    abspath = os.path.abspath(path)
    return build_config(read_ini(abspath), abspath)
