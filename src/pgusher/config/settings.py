"""The declarative table of global settings.

Strategy: every key of the ``[pgbouncer]`` section (and of pgusher's own ``[pgusher]``
section) is one typed attribute of a slotted dataclass, declared with :func:`setting`, which
stores the default in the dataclass field and the rest (reloadability, documentation, allowed
choices, bounds, a custom parser) in the field's metadata.  :func:`build_table` walks the
fields once at import time and turns each into a :class:`SettingSpec`, deriving the value
kind from the annotation (``int``, ``float`` = seconds, ``bool``, ``str``, ``str | None``,
``list[str]``; a ``str`` with choices is an enum).  Parsing and display are therefore defined
once per kind, not once per key.  Nothing here does I/O.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from pgusher.errors import ConfigError

__all__ = [
    "PGUSHER_TABLE",
    "SETTINGS_TABLE",
    "PgusherSettings",
    "SettingSpec",
    "Settings",
    "apply_setting",
    "build_table",
    "changed_settings",
    "parse_bool",
    "parse_c_int",
    "parse_list",
    "parse_seconds",
    "setting",
]

T = TypeVar("T")

_META_KEY = "pgusher.setting"

POOL_MODES = ("session", "transaction", "statement")
AUTH_TYPES = ("any", "trust", "plain", "md5", "scram-sha-256", "cert", "hba", "pam")
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


# ---------------------------------------------------------------------------------------------
# Value parsers shared by every kind.  Each raises ValueError carrying a short reason.
# ---------------------------------------------------------------------------------------------

_C_INT_RE = re.compile(r"([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")


def parse_c_int(raw: str) -> int:
    """Parse an integer the way C's ``strtol(value, end, 0)`` does for a whole string.

    ``0x1f`` is hexadecimal, a leading ``0`` means octal (``0777``), anything else decimal.
    """
    m = _C_INT_RE.fullmatch(raw.strip())
    if m is None:
        raise ValueError("expected an integer")
    sign, digits = m.groups()
    if digits[:2] in ("0x", "0X"):
        value = int(digits[2:], 16)
    elif len(digits) > 1 and digits[0] == "0":
        value = int(digits[1:], 8)
    else:
        value = int(digits, 10)
    return -value if sign == "-" else value


_TRUE_WORDS = frozenset({"1", "yes", "on", "true", "y", "t"})
_FALSE_WORDS = frozenset({"0", "no", "off", "false", "n", "f"})


def parse_bool(raw: str) -> bool:
    """Accept 0/1/yes/no/on/off/true/false; any other integer counts as its truth value."""
    word = raw.strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    try:
        return parse_c_int(word) != 0
    except ValueError:
        raise ValueError("expected a boolean (0/1, yes/no, on/off, true/false)") from None


_TIME_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(?:[eE]([+-]?\d+))?\s*([A-Za-z]*)")
_TIME_UNITS: dict[str, float] = {
    "": 1.0,
    "us": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "sec": 1.0,
    "min": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}


def parse_seconds(raw: str) -> float:
    """A non-negative duration in seconds: ``15``, ``1.5``, ``500ms``, ``15s``, ``1min``, ``1h``."""
    m = _TIME_RE.fullmatch(raw.strip())
    if m is None:
        raise ValueError("expected a non-negative number of seconds, optionally with a unit "
                         "(us, ms, s, min, h, d)")
    number, exponent, unit = m.groups()
    factor = _TIME_UNITS.get(unit.lower())
    if factor is None:
        raise ValueError(f"unknown time unit '{unit}' (use us, ms, s, min, h or d)")
    value = float(number + (f"e{exponent}" if exponent else "")) * factor
    if not math.isfinite(value):
        raise ValueError("duration out of range")
    return value


def parse_list(raw: str) -> list[str]:
    """A comma-separated list; items are stripped and empty items dropped."""
    return [item.strip() for item in raw.split(",") if item.strip()]


_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?")


def _parse_table_name(raw: str) -> str:
    name = raw.strip()
    if not _TABLE_NAME.fullmatch(name):
        raise ValueError("expected a table name: letters, digits and _, optionally schema.")
    return name


def parse_app_weights(raw: str) -> dict[str, float]:
    """``name:weight, name:weight``: each application's weight in the queue for servers."""
    weights: dict[str, float] = {}
    for item in raw.split(","):
        if not item.strip():
            continue
        name, sep, number = item.rpartition(":")
        try:
            weight = float(number)
        except ValueError:
            weight = 0.0
        if not sep or not name.strip() or not math.isfinite(weight) or weight <= 0:
            raise ValueError("expected application:weight pairs with positive weights")
        weights[name.strip()] = weight
    return weights


def _parse_app_weights(raw: str) -> str:
    parse_app_weights(raw)
    return raw.strip()


def _parse_workers(raw: str) -> str:
    word = raw.strip().lower()
    if word == "auto":
        return word
    try:
        count = int(word, 10)
    except ValueError:
        raise ValueError("expected a positive integer or 'auto'") from None
    if count < 1:
        raise ValueError("expected a positive integer or 'auto'")
    return str(count)


# ---------------------------------------------------------------------------------------------
# Declaration helper and the table entry type
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Meta:
    reloadable: bool
    doc: str
    choices: tuple[str, ...]
    minimum: int | float | None
    maximum: int | float | None
    parser: Callable[[str], object] | None
    alias_of: str | None


def setting(default: T, *, reloadable: bool = True, doc: str = "",
            choices: tuple[str, ...] = (), minimum: int | float | None = None,
            maximum: int | float | None = None, parser: Callable[[str], object] | None = None,
            alias_of: str | None = None) -> T:
    """Declare one setting: a dataclass field whose metadata describes how to parse it."""
    meta = {_META_KEY: _Meta(reloadable, doc, choices, minimum, maximum, parser, alias_of)}
    if isinstance(default, list):
        items = list(default)
        return cast(T, dataclasses.field(default_factory=lambda: list(items), metadata=meta))
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True, slots=True)
class SettingSpec:
    """One row of a settings table.

    ``kind`` is one of ``int``, ``bool``, ``time`` (float seconds), ``str``, ``optstr``
    (``str | None``; an empty value means unset), ``list`` (comma-separated) or ``enum``.
    ``parser`` turns the raw ini text into the typed value and raises ``ValueError`` with a
    short reason when it cannot; bounds and choices are already applied by it.
    """

    name: str
    kind: str
    default: object
    reloadable: bool
    doc: str
    parser: Callable[[str], object]
    choices: tuple[str, ...] = ()
    minimum: int | float | None = None
    maximum: int | float | None = None
    alias_of: str | None = None

    def parse(self, raw: str) -> object:
        """Typed value for ``raw``; ``ValueError`` with a short reason when invalid."""
        return self.parser(raw)

    def format(self, value: object) -> str:
        """Display a value as PgBouncer's SHOW CONFIG does (booleans as 0/1, times as %g)."""
        if value is None:
            return ""
        if isinstance(value, bool):
            return "1" if value else "0"
        if isinstance(value, float):
            return format(value, "g")
        if isinstance(value, list):
            return ",".join(str(v) for v in value)
        return str(value)

    @property
    def default_text(self) -> str:
        """The default, formatted like a current value."""
        return self.format(self.default)


def _kind_of(hint: object, meta: _Meta) -> str:
    if hint is bool:
        return "bool"
    if hint is int:
        return "int"
    if hint is float:
        return "time"
    if hint is str:
        return "enum" if meta.choices else "str"
    if hint == (str | None):
        return "optstr"
    if typing.get_origin(hint) is list and typing.get_args(hint) == (str,):
        return "list"
    raise TypeError(f"unsupported setting type {hint!r}")


def _parse_optstr(raw: str) -> str | None:
    return raw if raw != "" else None


def _parse_str(raw: str) -> str:
    return raw


def _enum_parser(choices: tuple[str, ...]) -> Callable[[str], object]:
    def parse_enum(raw: str) -> str:
        word = raw.strip().lower()
        if word not in choices:
            raise ValueError("expected one of: " + ", ".join(choices))
        return word

    return parse_enum


_KIND_PARSERS: dict[str, Callable[[str], object]] = {
    "int": parse_c_int,
    "bool": parse_bool,
    "time": parse_seconds,
    "list": parse_list,
    "optstr": _parse_optstr,
    "str": _parse_str,
}


def _make_parser(kind: str, meta: _Meta) -> Callable[[str], object]:
    if meta.parser is not None:
        base = meta.parser
    elif kind == "enum":
        base = _enum_parser(meta.choices)
    else:
        base = _KIND_PARSERS[kind]

    lo, hi = meta.minimum, meta.maximum
    if lo is None and hi is None:
        return base

    def bounded(raw: str) -> object:
        value = base(raw)
        number = cast(float, value)
        if lo is not None and number < lo:
            raise ValueError(f"must be at least {lo}")
        if hi is not None and number > hi:
            raise ValueError(f"must be at most {hi}")
        return value

    return bounded


def build_table(cls: type[Any]) -> dict[str, SettingSpec]:
    """Derive the specs of a settings dataclass from its fields, in declaration order."""
    hints = typing.get_type_hints(cls)
    table: dict[str, SettingSpec] = {}
    for f in dataclasses.fields(cls):
        meta = f.metadata.get(_META_KEY)
        if not isinstance(meta, _Meta):
            raise TypeError(f"{cls.__name__}.{f.name} is not declared with setting()")
        kind = _kind_of(hints[f.name], meta)
        if f.default is not dataclasses.MISSING:
            default: object = f.default
        else:
            assert f.default_factory is not dataclasses.MISSING
            default = f.default_factory()
        table[f.name] = SettingSpec(
            name=f.name, kind=kind, default=default, reloadable=meta.reloadable,
            doc=meta.doc, parser=_make_parser(kind, meta), choices=meta.choices,
            minimum=meta.minimum, maximum=meta.maximum, alias_of=meta.alias_of)
    return table


# ---------------------------------------------------------------------------------------------
# [pgbouncer]
# ---------------------------------------------------------------------------------------------

_ON_LINUX = sys.platform.startswith("linux")
_DEFAULT_AUTH_QUERY = ("SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL "
                       "ELSE rolpassword END FROM pg_authid WHERE rolname=$1 AND rolcanlogin")
_PORT_MAX = 65535
_UINT_MAX = 4294967295


@dataclass(slots=True)
class Settings:
    """The ``[pgbouncer]`` section: one attribute per key, named and defaulted as PgBouncer.

    Times are float seconds.  ``str | None`` attributes are ``None`` when not set.
    """

    # -- generic -----------------------------------------------------------------------------
    logfile: str = setting("", doc="File to log to, in addition to stderr; empty = none.")
    pidfile: str = setting("", reloadable=False, doc="PID file; needed for daemon mode.")
    listen_addr: str = setting(
        "", reloadable=False,
        doc="Comma-separated TCP addresses to listen on; '*' = all; empty = Unix socket only.")
    listen_port: int = setting(6432, reloadable=False, minimum=0, maximum=_PORT_MAX,
                               doc="Port for TCP and for the Unix socket's name.")
    unix_socket_dir: str = setting("/tmp", reloadable=False,
                                   doc="Directory of the Unix socket; empty disables it.")
    unix_socket_mode: int = setting(0o777, reloadable=False, minimum=0, maximum=0o7777,
                                    doc="File mode of the Unix socket (octal allowed).")
    unix_socket_group: str = setting("", reloadable=False,
                                     doc="Group owning the Unix socket.")
    user: str | None = setting(None, reloadable=False,
                               doc="Unix user to switch to after startup.")
    pool_mode: str = setting("session", choices=POOL_MODES,
                             doc="When a server connection goes back to the pool.")
    max_client_conn: int = setting(100, minimum=0, doc="Maximum number of client connections.")
    default_pool_size: int = setting(20, minimum=0,
                                     doc="Server connections per user/database pair.")
    min_pool_size: int = setting(0, minimum=0,
                                 doc="Keep at least this many server connections per pool.")
    reserve_pool_size: int = setting(0, minimum=0,
                                     doc="Extra connections allowed to a struggling pool.")
    reserve_pool_timeout: float = setting(
        5.0, doc="Wait this long before a queued client may use the reserve pool.")
    max_db_connections: int = setting(0, minimum=0,
                                      doc="Server connections per database; 0 = unlimited.")
    max_db_client_connections: int = setting(
        0, minimum=0, doc="Client connections per database; 0 = unlimited.")
    max_user_connections: int = setting(0, minimum=0,
                                        doc="Server connections per user; 0 = unlimited.")
    max_user_client_connections: int = setting(
        0, minimum=0, doc="Client connections per user; 0 = unlimited.")
    server_round_robin: bool = setting(
        False, doc="Reuse server connections round-robin instead of last-in first-out.")
    track_extra_parameters: list[str] = setting(  # noqa: RUF009
        ["IntervalStyle"], reloadable=False,
        doc="Reported parameters tracked per client besides the built-in ones.")
    ignore_startup_parameters: list[str] = setting(  # noqa: RUF009
        [], doc="Startup parameters accepted and ignored instead of refused.")
    peer_id: int = setting(0, minimum=0, maximum=16383,
                           doc="This process's id among peers; 0 disables peering.")
    disable_pqexec: bool = setting(False, reloadable=False,
                                   doc="Refuse the simple query protocol.")
    application_name_add_host: bool = setting(
        False, doc="Append the client's address to application_name at connect.")
    conffile: str | None = setting(None, doc="Path of the configuration file in use.")
    service_name: str = setting("pgbouncer", reloadable=False, alias_of="job_name",
                                doc="Alias of job_name.")
    job_name: str = setting("pgbouncer", reloadable=False,
                            doc="Service name used when registering as a system service.")
    stats_period: float = setting(60.0, doc="How often averages are computed and logged.")
    max_prepared_statements: int = setting(
        200, minimum=0,
        doc="Protocol-level prepared statements tracked per server connection; 0 = off.")
    scram_iterations: int = setting(4096, minimum=1,
                                    doc="Iterations used when computing SCRAM secrets.")

    # -- authentication ----------------------------------------------------------------------
    auth_type: str = setting("md5", choices=AUTH_TYPES, doc="How clients authenticate.")
    auth_hba_file: str = setting("", doc="HBA rules file used when auth_type is hba.")
    auth_ident_file: str | None = setting(None, doc="Ident map file used by HBA rules.")
    auth_file: str | None = setting(None, doc="File with user names and passwords.")
    auth_user: str | None = setting(
        None, doc="User that runs auth_query for users missing from auth_file.")
    auth_query: str = setting(_DEFAULT_AUTH_QUERY,
                              doc="Query returning (user name, password) for a user.")
    auth_dbname: str | None = setting(None, doc="Database in which auth_query runs.")
    auth_ldap_options: str | None = setting(None, doc="LDAP options (not supported).")

    # -- logging -----------------------------------------------------------------------------
    syslog: bool = setting(False, doc="Also log to syslog.")
    syslog_ident: str = setting("pgbouncer", doc="Program name reported to syslog.")
    syslog_facility: str = setting("daemon", doc="Syslog facility.")
    log_connections: bool = setting(True, doc="Log successful logins.")
    log_disconnections: bool = setting(True, doc="Log disconnections with reasons.")
    log_pooler_errors: bool = setting(True, doc="Log errors the pooler sends to clients.")
    log_stats: bool = setting(True, doc="Log aggregated statistics every stats_period.")
    verbose: int = setting(0, minimum=0, doc="Extra log verbosity.")

    # -- console access ----------------------------------------------------------------------
    admin_users: list[str] = setting(  # noqa: RUF009
        [], doc="Users allowed to run every console command.")
    stats_users: list[str] = setting(  # noqa: RUF009
        [], doc="Users allowed read-only console commands.")

    # -- connection sanity checks, timeouts --------------------------------------------------
    server_reset_query: str = setting("DISCARD ALL",
                                      doc="Sent to a server before it is reused.")
    server_reset_query_always: bool = setting(
        False, doc="Run server_reset_query in every pool mode, not only session.")
    server_check_delay: float = setting(
        30.0, doc="Released servers younger than this skip the health check.")
    server_check_query: str = setting(
        "<empty>", doc="Health check query; empty disables, '<empty>' (the default, as in "
                       "PgBouncer 1.25) sends an empty query.")
    server_fast_close: bool = setting(
        False, doc="Close servers marked for reconnect at transaction end in session mode.")
    server_lifetime: float = setting(3600.0,
                                     doc="Close unused servers connected longer than this.")
    server_idle_timeout: float = setting(600.0,
                                         doc="Close servers idle longer than this; 0 = off.")
    server_connect_timeout: float = setting(15.0,
                                            doc="Limit for server connect plus login.")
    server_login_retry: float = setting(15.0,
                                        doc="Wait this long after a failed server login.")
    client_login_timeout: float = setting(60.0,
                                          doc="Disconnect clients not logged in by then.")
    autodb_idle_timeout: float = setting(
        3600.0, doc="Free databases created from '*' after this long unused.")
    pool_idle_timeout: float = setting(0.0,
                                       doc="Free completely empty pools after this; 0 = off.")
    dns_max_ttl: float = setting(15.0, doc="How long DNS answers are cached.")
    dns_nxdomain_ttl: float = setting(15.0, doc="How long DNS failures are cached.")
    dns_zone_check_period: float = setting(0.0,
                                           doc="Period of DNS zone serial checks; 0 = off.")
    resolv_conf: str = setting("", reloadable=False, doc="Custom resolv.conf file.")
    query_wait_notify: float = setting(
        5.0, doc="Tell queued clients they are waiting after this long; 0 = never.")
    login_notify_message: str = setting("", doc="Notice sent to clients after login.")

    # -- dangerous timeouts ------------------------------------------------------------------
    query_timeout: float = setting(0.0, doc="Cancel queries running longer; 0 = off.")
    query_wait_timeout: float = setting(
        120.0, doc="Disconnect clients queued longer than this; 0 = wait forever.")
    cancel_wait_timeout: float = setting(
        10.0, doc="Drop cancel requests queued longer than this; 0 = wait forever.")
    client_idle_timeout: float = setting(0.0,
                                         doc="Close clients idle longer than this; 0 = off.")
    idle_transaction_timeout: float = setting(
        0.0, doc="Close clients idle inside a transaction longer than this; 0 = off.")
    transaction_timeout: float = setting(
        0.0, doc="Close clients inside a transaction longer than this; 0 = off.")
    suspend_timeout: float = setting(10.0,
                                     doc="How long SUSPEND waits for buffers to flush.")

    # -- low-level network -------------------------------------------------------------------
    pkt_buf: int = setting(4096, reloadable=False, minimum=0,
                           doc="Internal packet buffer size.")
    max_packet_size: int = setting(2147483647, minimum=0, maximum=_UINT_MAX,
                                   doc="Largest protocol message let through.")
    listen_backlog: int = setting(128, reloadable=False, minimum=0,
                                  doc="Backlog argument of listen(2).")
    sbuf_loopcnt: int = setting(5, minimum=0,
                                doc="Rounds of work on one connection before moving on.")
    so_reuseport: bool = setting(False, reloadable=False,
                                 doc="Set SO_REUSEPORT on listening TCP sockets.")
    tcp_defer_accept: bool = setting(_ON_LINUX, doc="Set TCP_DEFER_ACCEPT (Linux).")
    tcp_socket_buffer: int = setting(0, minimum=0, doc="Socket buffer size; 0 = OS default.")
    tcp_keepalive: bool = setting(True, doc="Enable TCP keepalive.")
    tcp_keepcnt: int = setting(0, minimum=0, doc="TCP_KEEPCNT; 0 = OS default.")
    tcp_keepidle: int = setting(0, minimum=0, doc="TCP_KEEPIDLE seconds; 0 = OS default.")
    tcp_keepintvl: int = setting(0, minimum=0, doc="TCP_KEEPINTVL seconds; 0 = OS default.")
    tcp_user_timeout: int = setting(0, minimum=0,
                                    doc="TCP_USER_TIMEOUT milliseconds; 0 = OS default.")

    # -- TLS ---------------------------------------------------------------------------------
    client_tls_sslmode: str = setting("disable", choices=SSL_MODES,
                                      doc="TLS policy for client connections.")
    client_tls_key_file: str = setting("", doc="Private key offered to clients.")
    client_tls_cert_file: str = setting("", doc="Certificate offered to clients.")
    client_tls_ca_file: str = setting("", doc="CA used to check client certificates.")
    client_tls_protocols: str = setting("secure", doc="TLS versions allowed for clients.")
    client_tls_ciphers: str = setting("default", doc="TLS 1.2 ciphers for clients.")
    client_tls13_ciphers: str | None = setting(None, doc="TLS 1.3 ciphers for clients.")
    client_tls_ecdhcurve: str = setting("auto", doc="ECDH curve for clients.")
    client_tls_dheparams: str = setting("auto", doc="DHE parameters for clients.")
    server_tls_sslmode: str = setting("prefer", choices=SSL_MODES,
                                      doc="TLS policy for server connections.")
    server_tls_ca_file: str = setting("", doc="CA used to check server certificates.")
    server_tls_key_file: str = setting("", doc="Private key presented to servers.")
    server_tls_cert_file: str = setting("", doc="Certificate presented to servers.")
    server_tls_protocols: str = setting("secure", doc="TLS versions allowed for servers.")
    server_tls_ciphers: str = setting("default", doc="TLS 1.2 ciphers for servers.")
    server_tls13_ciphers: str | None = setting(None, doc="TLS 1.3 ciphers for servers.")


# ---------------------------------------------------------------------------------------------
# [pgusher]
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class PgusherSettings:
    """The ``[pgusher]`` section: settings PgBouncer does not have."""

    http_port: int = setting(0, reloadable=False, minimum=0, maximum=_PORT_MAX,
                             doc="Port of the HTTP metrics/health endpoint; 0 = off.")
    http_addr: str = setting("127.0.0.1", reloadable=False,
                             doc="Address of the HTTP endpoint.")
    workers: str = setting("1", reloadable=False, parser=_parse_workers,
                           doc="Worker processes: a positive integer or 'auto'.")
    auth_fail_delay: float = setting(0.0, doc="Delay before reporting any failed login.")
    auth_fail_delay_max: float = setting(
        5.0, doc="Repeated failed logins from one address are reported later and later "
                 "(50 ms for the second, doubling), up to this; 0 = no growth.")
    session_real_pid: bool = setting(
        True, doc="In session mode (without peering) link the client's server at login and "
                  "give the client that backend's real process id in BackendKeyData.")
    pin_state: bool = setting(
        True, doc="Transaction mode: a client with a temporary table, a session advisory "
                  "lock or a WITH HOLD cursor keeps its server until that state is gone.")
    max_pinned_servers: int = setting(
        0, minimum=0, doc="Servers of one pool that pinned clients may keep at once (a client "
                          "over it is disconnected with an error); 0 = no limit.")
    max_app_connections: int = setting(
        0, minimum=0, doc="Server connections of one pool that clients of one application "
                          "(application_name) may hold at once; 0 = no limit.")
    app_weights: str = setting(
        "", parser=_parse_app_weights,
        doc="Weights of applications (application_name:weight, ...) when clients wait for "
            "servers: servers go to them in proportion; 1 for any not named.")
    fleet: str = setting("", reloadable=False,
                         doc="Name of the fleet this process belongs to: processes with the "
                             "same name share fleet_max_db_connections; empty = no fleet.")
    fleet_max_db_connections: int = setting(
        0, reloadable=False, minimum=0,
        doc="Server connections the whole fleet may hold per database; 0 = no fleet budget.")
    fleet_min_share: int = setting(1, minimum=0,
                                   doc="Servers per database a member may keep when idle.")
    fleet_check_interval: float = setting(
        1.0, minimum=0.05, doc="Seconds between a member's checks of the fleet's claims "
                               "(sooner when clients wait for the grant).")
    fleet_lease_timeout: float = setting(
        5.0, minimum=0.5, doc="A member whose claim is older than this stops counting.")
    fleet_table: str = setting("pgusher_fleet", reloadable=False, parser=_parse_table_name,
                               doc="Table of the fleet's claims, made in each database.")


SETTINGS_TABLE: dict[str, SettingSpec] = build_table(Settings)
PGUSHER_TABLE: dict[str, SettingSpec] = build_table(PgusherSettings)


def linked_names(table: Mapping[str, SettingSpec], name: str) -> list[str]:
    """``name`` plus every key that is an alias of it or that it is an alias of."""
    spec = table[name]
    root = spec.alias_of or name
    return [n for n, s in table.items() if n == root or s.alias_of == root]


def apply_setting(settings: Settings, name: str, raw: str, *,
                  where: str = "") -> Settings:
    """A copy of ``settings`` with one key changed from its raw text (e.g. console ``SET``).

    Raises ConfigError for an unknown key or a bad value; ``where`` prefixes the message.
    """
    prefix = f"{where}: " if where else ""
    key = name.strip().lower()
    spec = SETTINGS_TABLE.get(key)
    if spec is None:
        raise ConfigError(f"{prefix}unknown parameter '{name}'")
    try:
        value = spec.parse(raw)
    except ValueError as exc:
        raise ConfigError(
            f"{prefix}invalid value for parameter '{key}': '{raw}' ({exc})") from None
    changes = {n: value for n in linked_names(SETTINGS_TABLE, key)}
    return dataclasses.replace(settings, **cast(dict[str, Any], changes))


def changed_settings(old: object, new: object, table: Mapping[str, SettingSpec]) -> list[str]:
    """Names (in table order) whose values differ between two settings objects."""
    return [name for name in table if getattr(old, name) != getattr(new, name)]
