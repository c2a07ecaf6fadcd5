"""Configuration: PgBouncer-compatible ini files, read and validated in one go.

Strategy: a small pipeline of pure stages - :mod:`.ini` lexes files (the only I/O),
:mod:`.connstr` splits libpq-style connection strings, :mod:`.settings` declares every
global key once as a typed dataclass field, and :mod:`.loader` assembles and validates the
whole into a :class:`Config`, raising ConfigError before anything is returned.  This package
re-exports the public API.
"""

from pgusher.config.connstr import ConnStrError, format_connstr, parse_connstr, quote_value
from pgusher.config.loader import (
    Config,
    DatabaseEntry,
    PeerEntry,
    UserEntry,
    build_config,
    load_config,
    parse_database_entry,
    parse_peer_entry,
    parse_user_entry,
)
from pgusher.config.settings import (
    PGUSHER_TABLE,
    SETTINGS_TABLE,
    PgusherSettings,
    Settings,
    SettingSpec,
    apply_setting,
    parse_bool,
    parse_seconds,
)
from pgusher.errors import ConfigError

__all__ = [
    "PGUSHER_TABLE",
    "SETTINGS_TABLE",
    "Config",
    "ConfigError",
    "ConnStrError",
    "DatabaseEntry",
    "PeerEntry",
    "PgusherSettings",
    "SettingSpec",
    "Settings",
    "UserEntry",
    "apply_setting",
    "build_config",
    "format_connstr",
    "load_config",
    "parse_bool",
    "parse_connstr",
    "parse_database_entry",
    "parse_peer_entry",
    "parse_seconds",
    "parse_user_entry",
    "quote_value",
]
