"""Tests for pgusher.config: ini lexing, settings table, connection strings, loader."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from pgusher.config import (
    PGUSHER_TABLE,
    SETTINGS_TABLE,
    Config,
    ConfigError,
    ConnStrError,
    DatabaseEntry,
    PeerEntry,
    PgusherSettings,
    Settings,
    UserEntry,
    apply_setting,
    format_connstr,
    load_config,
    parse_connstr,
)
from pgusher.config.ini import (
    MAX_INCLUDE_DEPTH,
    IniEntry,
    IniInclude,
    IniKeyValue,
    IniSection,
    lex,
    read_ini,
)
from pgusher.config.settings import parse_bool, parse_c_int, parse_list, parse_seconds

# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

STYLES = ["lf", "crlf", "trailing-ws"]


def styled(text: str, style: str) -> str:
    """Rewrite line endings: plain LF, CRLF, or LF with trailing blanks on every line."""
    if style == "crlf":
        return text.replace("\n", "\r\n")
    if style == "trailing-ws":
        return text.replace("\n", " \t \n")
    return text


Writer = Callable[..., Path]


@pytest.fixture(params=STYLES)
def style(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def write(tmp_path: Path, style: str) -> Writer:
    def _write(text: str, name: str = "pgbouncer.ini") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(styled(text, style).encode("utf-8"))
        return path

    return _write


def load(write: Writer, text: str, name: str = "pgbouncer.ini") -> Config:
    return load_config(str(write(text, name)))


def load_main(write: Writer, body: str) -> Config:
    """Load a file made of a [pgbouncer] section holding ``body``."""
    return load(write, "[pgbouncer]\n" + body)


def config_error(write: Writer, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(write, text)
    return str(info.value)


# ---------------------------------------------------------------------------------------------
# defaults and the table
# ---------------------------------------------------------------------------------------------

EXPECTED_DEFAULTS: dict[str, object] = {
    "listen_addr": "",
    "listen_port": 6432,
    "unix_socket_dir": "/tmp",
    "unix_socket_mode": 0o777,
    "pool_mode": "session",
    "max_client_conn": 100,
    "default_pool_size": 20,
    "min_pool_size": 0,
    "reserve_pool_size": 0,
    "reserve_pool_timeout": 5.0,
    "max_db_connections": 0,
    "server_reset_query": "DISCARD ALL",
    "server_reset_query_always": False,
    "server_check_query": "<empty>",
    "server_check_delay": 30.0,
    "server_lifetime": 3600.0,
    "server_idle_timeout": 600.0,
    "server_connect_timeout": 15.0,
    "server_login_retry": 15.0,
    "client_login_timeout": 60.0,
    "autodb_idle_timeout": 3600.0,
    "query_timeout": 0.0,
    "query_wait_timeout": 120.0,
    "cancel_wait_timeout": 10.0,
    "client_idle_timeout": 0.0,
    "idle_transaction_timeout": 0.0,
    "suspend_timeout": 10.0,
    "auth_type": "md5",
    "auth_file": None,
    "auth_user": None,
    "max_packet_size": 2147483647,
    "pkt_buf": 4096,
    "listen_backlog": 128,
    "sbuf_loopcnt": 5,
    "stats_period": 60.0,
    "log_connections": True,
    "log_disconnections": True,
    "log_pooler_errors": True,
    "log_stats": True,
    "verbose": 0,
    "syslog": False,
    "syslog_ident": "pgbouncer",
    "syslog_facility": "daemon",
    "track_extra_parameters": ["IntervalStyle"],
    "ignore_startup_parameters": [],
    "admin_users": [],
    "stats_users": [],
    "max_prepared_statements": 200,
    "dns_max_ttl": 15.0,
    "dns_nxdomain_ttl": 15.0,
    "tcp_keepalive": True,
    "client_tls_sslmode": "disable",
    "server_tls_sslmode": "prefer",
    "client_tls_protocols": "secure",
    "peer_id": 0,
    "job_name": "pgbouncer",
}


def test_defaults_match_pgbouncer() -> None:
    settings = Settings()
    for name, expected in EXPECTED_DEFAULTS.items():
        assert getattr(settings, name) == expected, name
        assert SETTINGS_TABLE[name].default == expected, name
    assert settings.auth_query.startswith("SELECT rolname")
    assert "pg_authid" in settings.auth_query


def _words(text: str) -> list[str]:
    return text.split()


REQUIRED_KEYS = _words("""
logfile pidfile listen_addr listen_port unix_socket_dir unix_socket_mode unix_socket_group user
pool_mode max_client_conn default_pool_size min_pool_size reserve_pool_size reserve_pool_timeout
max_db_connections max_db_client_connections max_user_connections max_user_client_connections
server_round_robin track_extra_parameters ignore_startup_parameters peer_id disable_pqexec
application_name_add_host conffile service_name job_name stats_period max_prepared_statements
auth_type auth_hba_file auth_ident_file auth_file auth_user auth_query auth_dbname syslog
syslog_ident syslog_facility log_connections log_disconnections log_pooler_errors log_stats
verbose admin_users stats_users server_reset_query server_reset_query_always server_check_delay
server_check_query server_fast_close server_lifetime server_idle_timeout server_connect_timeout
server_login_retry client_login_timeout autodb_idle_timeout dns_max_ttl dns_nxdomain_ttl
dns_zone_check_period resolv_conf query_timeout query_wait_timeout cancel_wait_timeout
client_idle_timeout idle_transaction_timeout transaction_timeout suspend_timeout pkt_buf
max_packet_size listen_backlog sbuf_loopcnt so_reuseport tcp_defer_accept tcp_socket_buffer
tcp_keepalive tcp_keepcnt tcp_keepidle tcp_keepintvl tcp_user_timeout client_tls_sslmode
client_tls_key_file client_tls_cert_file client_tls_ca_file client_tls_protocols
client_tls_ciphers client_tls_ecdhcurve client_tls_dheparams server_tls_sslmode
server_tls_ca_file server_tls_key_file server_tls_cert_file server_tls_protocols
server_tls_ciphers scram_iterations client_tls13_ciphers server_tls13_ciphers
""")


def test_table_covers_every_documented_key() -> None:
    missing = [k for k in REQUIRED_KEYS if k not in SETTINGS_TABLE]
    assert missing == []
    names = {f.name for f in dataclasses.fields(Settings)}
    assert names == set(SETTINGS_TABLE)


def test_table_kinds_and_reloadability() -> None:
    t = SETTINGS_TABLE
    assert (t["listen_port"].kind, t["listen_port"].reloadable) == ("int", False)
    assert (t["pool_mode"].kind, t["pool_mode"].reloadable) == ("enum", True)
    assert t["pool_mode"].choices == ("session", "transaction", "statement")
    assert t["server_lifetime"].kind == "time"
    assert t["log_connections"].kind == "bool"
    assert t["admin_users"].kind == "list"
    assert t["auth_user"].kind == "optstr"
    assert t["logfile"].kind == "str"
    for name in ("listen_addr", "unix_socket_dir", "pidfile", "pkt_buf", "so_reuseport",
                 "track_extra_parameters", "listen_backlog", "user"):
        assert not t[name].reloadable, name
    assert all(spec.doc for spec in t.values())
    assert {s.kind for s in PGUSHER_TABLE.values()} == {"int", "str", "time"}


def test_spec_format_like_show_config() -> None:
    t = SETTINGS_TABLE
    assert t["server_lifetime"].format(3600.0) == "3600"
    assert t["reserve_pool_timeout"].format(0.5) == "0.5"
    assert t["log_stats"].format(True) == "1"
    assert t["syslog"].default_text == "0"
    assert t["auth_user"].default_text == ""
    assert t["track_extra_parameters"].format(["a", "b"]) == "a,b"
    assert t["listen_port"].default_text == "6432"


# ---------------------------------------------------------------------------------------------
# value parsers (pure functions)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "expected"), [
    ("0", 0), ("42", 42), ("-3", -3), ("+7", 7), ("0777", 511), ("0x1F", 31), (" 12 ", 12),
])
def test_parse_c_int(raw: str, expected: int) -> None:
    assert parse_c_int(raw) == expected


@pytest.mark.parametrize("raw", ["", "abc", "12x", "1.5", "089", "0x", "1 2"])
def test_parse_c_int_rejects(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_c_int(raw)


@pytest.mark.parametrize(("raw", "expected"), [
    ("1", True), ("0", False), ("yes", True), ("No", False), ("ON", True), ("off", False),
    ("true", True), ("False", False), ("2", True),
])
def test_parse_bool(raw: str, expected: bool) -> None:
    assert parse_bool(raw) is expected


@pytest.mark.parametrize(("raw", "expected"), [
    ("15", 15.0), ("1.5", 1.5), (".5", 0.5), ("15s", 15.0), ("500ms", 0.5), ("1min", 60.0),
    ("1h", 3600.0), ("2 d", 172800.0), ("250us", 0.00025), ("1e2", 100.0), ("0", 0.0),
])
def test_parse_seconds(raw: str, expected: float) -> None:
    assert parse_seconds(raw) == pytest.approx(expected)


@pytest.mark.parametrize("raw", ["", "-1", "abc", "5 parsecs", "1h30", "nan", "inf"])
def test_parse_seconds_rejects(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_seconds(raw)


def test_parse_list() -> None:
    assert parse_list(" a, b,,c ,") == ["a", "b", "c"]
    assert parse_list("") == []


# ---------------------------------------------------------------------------------------------
# [pgbouncer] section through the loader (every test runs with LF, CRLF and trailing blanks)
# ---------------------------------------------------------------------------------------------


def test_every_kind_parses(write: Writer) -> None:
    cfg = load_main(write, (
        "listen_addr = 127.0.0.1, ::1\n"
        "listen_port = 6433\n"
        "unix_socket_mode = 0700\n"
        "pool_mode = Transaction\n"
        "server_round_robin = yes\n"
        "log_connections = off\n"
        "server_lifetime = 1h\n"
        "query_wait_timeout = 500ms\n"
        "reserve_pool_timeout = 2.5\n"
        "admin_users = alice, bob ,,\n"
        "ignore_startup_parameters = extra_float_digits,options\n"
        "auth_user = authenticator\n"
        "auth_type = scram-sha-256\n"
        "server_tls_sslmode = verify-full\n"
        "logfile = /var/log/pgusher.log\n"
    ))
    s = cfg.settings
    assert s.listen_addr == "127.0.0.1, ::1"
    assert s.listen_port == 6433
    assert s.unix_socket_mode == 0o700
    assert s.pool_mode == "transaction"
    assert s.server_round_robin is True
    assert s.log_connections is False
    assert s.server_lifetime == 3600.0
    assert s.query_wait_timeout == 0.5
    assert s.reserve_pool_timeout == 2.5
    assert s.admin_users == ["alice", "bob"]
    assert s.ignore_startup_parameters == ["extra_float_digits", "options"]
    assert s.auth_user == "authenticator"
    assert s.auth_type == "scram-sha-256"
    assert s.server_tls_sslmode == "verify-full"
    assert s.logfile == "/var/log/pgusher.log"
    assert cfg.warnings == []


def test_empty_values(write: Writer) -> None:
    cfg = load_main(write, "auth_user =\nunix_socket_dir =\ntrack_extra_parameters =\n")
    assert cfg.settings.auth_user is None
    assert cfg.settings.unix_socket_dir == ""
    assert cfg.settings.track_extra_parameters == []


def test_keys_are_case_insensitive(write: Writer) -> None:
    cfg = load(write, "[PgBouncer]\nLISTEN_PORT = 7000\nPool_Mode = statement\n")
    assert cfg.settings.listen_port == 7000
    assert cfg.settings.pool_mode == "statement"


@pytest.mark.parametrize(("key", "value"), [
    ("listen_port", "abc"),
    ("listen_port", "70000"),
    ("max_client_conn", "-5"),
    ("max_client_conn", "12x"),
    ("log_connections", "maybe"),
    ("server_lifetime", "-1"),
    ("server_lifetime", "1 fortnight"),
    ("pool_mode", "bogus"),
    ("auth_type", "kerberos"),
    ("client_tls_sslmode", "always"),
    ("peer_id", "16384"),
    ("listen_port", ""),
])
def test_bad_values_name_file_line_key_value(write: Writer, key: str, value: str) -> None:
    path = write(f"; header\n[pgbouncer]\nlisten_addr = *\n{key} = {value}\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    msg = str(info.value)
    assert msg.startswith(f"{path}:4: invalid value for parameter '{key}': '{value}' (")
    assert msg.endswith(")")


def test_bad_value_reason_is_short_and_useful(write: Writer) -> None:
    msg = config_error(write, "[pgbouncer]\npool_mode = bogus\n")
    assert "expected one of: session, transaction, statement" in msg


def test_unknown_key_is_a_warning(write: Writer) -> None:
    path = write("[pgbouncer]\nlisten_port = 6432\n\nfoo = bar\n")
    cfg = load_config(str(path))
    assert cfg.warnings == [f"{path}:4: unknown parameter 'foo' in section [pgbouncer], ignored"]


def test_keys_outside_sections_and_unknown_sections_warn(write: Writer) -> None:
    path = write("stray = 1\n[pgbouncer]\n[mystery]\nx = 1\n")
    cfg = load_config(str(path))
    assert cfg.warnings == [
        f"{path}:1: parameter 'stray' outside of any section, ignored",
        f"{path}:4: parameter 'x' in unknown section [mystery], ignored",
    ]


def test_job_name_and_service_name_are_aliases(write: Writer) -> None:
    cfg = load_main(write, "service_name = mybouncer\n")
    assert cfg.settings.job_name == "mybouncer"
    assert cfg.settings.service_name == "mybouncer"


def test_conffile_defaults_to_main_file(write: Writer) -> None:
    path = write("[pgbouncer]\n")
    cfg = load_config(str(path))
    assert cfg.path == str(path)
    assert os.path.isabs(cfg.path)
    assert cfg.settings.conffile == str(path)


def test_relative_path_is_made_absolute(write: Writer, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write("[pgbouncer]\n")
    monkeypatch.chdir(path.parent)
    assert load_config(path.name).path == str(path)


def test_missing_main_section_is_an_error(write: Writer) -> None:
    path = write("[databases]\nfoo = host=x\n")
    with pytest.raises(ConfigError, match=r"section \[pgbouncer\] is missing"):
        load_config(str(path))


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="could not read configuration file"):
        load_config(str(tmp_path / "nope.ini"))


def test_invalid_utf8_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.ini"
    path.write_bytes(b"[pgbouncer]\nlogfile = \xff\xfe\n")
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        load_config(str(path))


# ---------------------------------------------------------------------------------------------
# comments and syntax
# ---------------------------------------------------------------------------------------------


def test_comments_and_hash_inside_values(write: Writer) -> None:
    cfg = load(write, (
        "; a semicolon comment\n"
        "# a hash comment\n"
        "   ; indented comment\n"
        "\n"
        "[pgbouncer] ; comment after a header\n"
        "server_check_query = select 1 # not a comment\n"
        "logfile = /tmp/a;b.log\n"
        "\t# listen_port = 1\n"
        "[databases]\n"
        "app = host=db password=se#cr;et\n"
    ))
    assert cfg.settings.server_check_query == "select 1 # not a comment"
    assert cfg.settings.logfile == "/tmp/a;b.log"
    assert cfg.settings.listen_port == 6432
    assert cfg.databases["app"].password == "se#cr;et"


def test_whitespace_around_keys_and_values(write: Writer) -> None:
    cfg = load(write, "  [ pgbouncer ]  \n   listen_port   =    7001   \nlogfile=x\n")
    assert cfg.settings.listen_port == 7001
    assert cfg.settings.logfile == "x"


@pytest.mark.parametrize(("line", "fragment"), [
    ("this is not valid", "expected 'key = value'"),
    ("[pgbouncer", "missing ']'"),
    ("[]", "empty section name"),
    ("[pgbouncer] junk", "unexpected text after section header"),
    ("= value", "missing key before '='"),
    ("two words = 1", "contains whitespace"),
    ("%define x", "unknown directive"),
    ("%include", "%include needs a file name"),
    ('"unterminated = 1', "unterminated quoted name"),
])
def test_syntax_errors_name_file_and_line(write: Writer, line: str, fragment: str) -> None:
    path = write(f"[pgbouncer]\nlisten_port = 1\n{line}\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    msg = str(info.value)
    assert msg.startswith(f"{path}:3: syntax error")
    assert fragment in msg


def test_lex_is_pure_and_strips_bom() -> None:
    items = lex('\ufeff[Databases]\r\n"my ""db""" = host=x\r\n%include other.ini\n', "f.ini")
    assert items[0] == IniSection("databases", "f.ini", 1)
    assert [type(i).__name__ for i in items] == ["IniSection", "IniKeyValue", "IniInclude"]
    kv, inc = items[1], items[2]
    assert isinstance(kv, IniKeyValue) and kv.key == 'my "db"'
    assert isinstance(inc, IniInclude) and inc.path == "other.ini"


# ---------------------------------------------------------------------------------------------
# %include
# ---------------------------------------------------------------------------------------------


def test_include_relative_nested_and_section_carried(write: Writer) -> None:
    write("[databases]\nsub = host=sub\n%include deeper/last.ini\n", "conf.d/dbs.ini")
    write("deep = host=deep\n[pgbouncer]\nmax_client_conn = 7\n", "conf.d/deeper/last.ini")
    path = write(
        "[pgbouncer]\nlisten_port = 6000\n%include conf.d/dbs.ini\ndefault_pool_size = 3\n")
    cfg = load_config(str(path))
    assert set(cfg.databases) == {"sub", "deep"}
    assert cfg.settings.listen_port == 6000
    assert cfg.settings.max_client_conn == 7
    # the included file switched back to [pgbouncer]; the includer continues there
    assert cfg.settings.default_pool_size == 3


def test_include_absolute_path(write: Writer, tmp_path: Path) -> None:
    other = write("[databases]\nabs = host=h\n", "elsewhere/x.ini")
    path = write(f"[pgbouncer]\n%include {other}\n")
    assert "abs" in load_config(str(path)).databases


def test_include_errors_report_included_file(write: Writer) -> None:
    inc = write("[pgbouncer]\nlisten_port = nope\n", "inc.ini")
    path = write("[pgbouncer]\n%include inc.ini\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(info.value).startswith(f"{inc}:2: invalid value for parameter 'listen_port'")


def test_include_loop_is_an_error(write: Writer) -> None:
    write("[pgbouncer]\n%include b.ini\n", "a.ini")
    b = write("%include a.ini\n", "b.ini")
    with pytest.raises(ConfigError) as info:
        load(write, "[pgbouncer]\n%include a.ini\n", "main.ini")
    assert str(info.value).startswith(f"{b}:1: include loop")


def test_self_include_is_an_error(write: Writer) -> None:
    msg = config_error(write, "[pgbouncer]\n%include pgbouncer.ini\n")
    assert "include loop" in msg


def test_include_depth_limit(write: Writer) -> None:
    for i in range(MAX_INCLUDE_DEPTH + 1):
        write(f"%include f{i + 1}.ini\n", f"f{i}.ini")
    write("x = 1\n", f"f{MAX_INCLUDE_DEPTH + 1}.ini")
    msg = config_error(write, "[pgbouncer]\n%include f0.ini\n")
    assert "nested too deeply" in msg
    # exactly at the limit is fine
    write("x = 1\n", f"f{MAX_INCLUDE_DEPTH - 1}.ini")
    cfg = load(write, "[pgbouncer]\n%include f0.ini\n")
    assert cfg.warnings and "unknown parameter 'x'" in cfg.warnings[0]


def test_include_missing_file(write: Writer) -> None:
    msg = config_error(write, "[pgbouncer]\n%include nowhere.ini\n")
    assert "could not read configuration file" in msg
    assert "nowhere.ini" in msg


def test_read_ini_with_injected_reader() -> None:
    files = {"/etc/a.ini": "[users]\n%include b.ini\n", "/etc/b.ini": "bob = pool_size=1\n"}
    lines = read_ini("/etc/a.ini", reader=files.__getitem__, exists=files.__contains__)
    assert lines == [IniSection("users", "/etc/a.ini", 1),
                     IniEntry("users", "bob", "pool_size=1", "/etc/b.ini", 1)]


# ---------------------------------------------------------------------------------------------
# connection strings
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("", []),
    ("host=a port=5432", [("host", "a"), ("port", "5432")]),
    ("  host = a   port= 1 ", [("host", "a"), ("port", "1")]),
    ("connect_query='SELECT 1'", [("connect_query", "SELECT 1")]),
    (r"password='it\'s a \\ secret'", [("password", "it's a \\ secret")]),
    ("password=''", [("password", "")]),
    (r"password=a\'b\\c", [("password", "a'b\\c")]),
    (r"path='C:\dir\x'", [("path", r"C:\dir\x")]),
    ("connect_query='SET x = ''y'''", [("connect_query", "SET x = 'y'")]),
    ("HOST=x", [("host", "x")]),
    ("application_name='a=b c'", [("application_name", "a=b c")]),
])
def test_parse_connstr(text: str, expected: list[tuple[str, str]]) -> None:
    assert parse_connstr(text) == expected
    assert parse_connstr(format_connstr(expected)) == expected


@pytest.mark.parametrize(("text", "fragment"), [
    ("host", "missing '=' after parameter 'host'"),
    ("=x", "missing parameter name"),
    ("host='unterminated", "unterminated quoted value"),
    ("host='a'b", "after quoted value"),
    ("ho-st=x", "invalid parameter name"),
])
def test_parse_connstr_errors(text: str, fragment: str) -> None:
    with pytest.raises(ConnStrError, match=fragment):
        parse_connstr(text)


# ---------------------------------------------------------------------------------------------
# [databases]
# ---------------------------------------------------------------------------------------------


def test_databases(write: Writer) -> None:
    cfg = load(write, (
        "[databases]\n"
        "foodb =\n"
        "bardb = host=localhost dbname=bazdb\n"
        "forcedb = host=127.0.0.1 port=300 user=baz password=foo client_encoding=UNICODE "
        "datestyle=ISO\n"
        "MixedCase = host = db1   port =5433\n"
        "quoted = host=h connect_query='SELECT set_config(''a'', ''b'', false)' "
        r"password='p\'w\\d' application_name='my app'" "\n"
        "pools = pool_size=30 min_pool_size=2 reserve_pool=3 max_db_connections=40 "
        "max_db_client_connections=100 pool_mode=transaction server_lifetime=120 "
        "auth_user=au auth_dbname=authdb auth_query='SELECT 1' timezone=UTC "
        "load_balance_hosts=disable\n"
        '"odd name" = host=x\n'
        "* = host=fallback port=6000\n"
        "[pgbouncer]\n"
    ))
    dbs = cfg.databases
    assert list(dbs) == ["foodb", "bardb", "forcedb", "MixedCase", "quoted", "pools",
                         "odd name", "*"]
    assert dbs["foodb"] == DatabaseEntry(name="foodb")
    assert dbs["foodb"].dbname is None and dbs["foodb"].host is None
    assert dbs["foodb"].port == 5432
    assert (dbs["bardb"].host, dbs["bardb"].dbname) == ("localhost", "bazdb")
    f = dbs["forcedb"]
    assert (f.port, f.user, f.password, f.client_encoding, f.datestyle) == (
        300, "baz", "foo", "UNICODE", "ISO")
    assert f.raw == {"host": "127.0.0.1", "port": "300", "user": "baz", "password": "foo",
                     "client_encoding": "UNICODE", "datestyle": "ISO"}
    assert (dbs["MixedCase"].host, dbs["MixedCase"].port) == ("db1", 5433)
    q = dbs["quoted"]
    assert q.password == "p'w\\d"
    assert q.application_name == "my app"
    p = dbs["pools"]
    assert (p.pool_size, p.min_pool_size, p.reserve_pool_size, p.max_db_connections,
            p.max_db_client_connections, p.pool_mode, p.server_lifetime) == (
        30, 2, 3, 40, 100, "transaction", 120.0)
    assert (p.auth_user, p.auth_dbname, p.auth_query, p.timezone, p.load_balance_hosts) == (
        "au", "authdb", "SELECT 1", "UTC", "disable")
    assert dbs["odd name"].host == "x"
    assert dbs["*"].host == "fallback" and dbs["*"].port == 6000


def test_database_later_definition_wins(write: Writer) -> None:
    cfg = load(write, "[pgbouncer]\n[databases]\na = host=1\na = host=2\n")
    assert cfg.databases["a"].host == "2"


def test_database_unknown_key_is_an_error(write: Writer) -> None:
    path = write("[pgbouncer]\n[databases]\n\nfoo = host=x sslmode=require\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    msg = str(info.value)
    assert msg == f"{path}:4: unknown parameter 'sslmode' in database 'foo': 'require'"


@pytest.mark.parametrize(("conn", "key", "value"), [
    ("port=abc", "port", "abc"),
    ("port=0", "port", "0"),
    ("pool_size=-1", "pool_size", "-1"),
    ("pool_size=1.5", "pool_size", "1.5"),
    ("pool_mode=sometimes", "pool_mode", "sometimes"),
    ("server_lifetime=soon", "server_lifetime", "soon"),
    ("load_balance_hosts=random", "load_balance_hosts", "random"),
])
def test_database_bad_values(write: Writer, conn: str, key: str, value: str) -> None:
    path = write(f"[pgbouncer]\n[databases]\nmydb = host=x {conn}\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(info.value).startswith(
        f"{path}:3: invalid value for parameter '{key}' in database 'mydb': '{value}' (")


def test_database_bad_connstr(write: Writer) -> None:
    msg = config_error(write, "[pgbouncer]\n[databases]\nmydb = host='x\n")
    assert ":3: invalid connection string for database 'mydb': unterminated" in msg


def test_database_name_pgbouncer_is_reserved(write: Writer) -> None:
    msg = config_error(write, "[pgbouncer]\n[databases]\npgbouncer = host=x\n")
    assert "reserved" in msg


def test_database_query_wait_timeout_minus_one_means_unset(write: Writer) -> None:
    cfg = load(write, "[pgbouncer]\n[databases]\na = query_wait_timeout=-1\nb = "
                      "query_wait_timeout=3\n")
    assert cfg.databases["a"].query_wait_timeout is None
    assert cfg.databases["b"].query_wait_timeout == 3.0


# ---------------------------------------------------------------------------------------------
# [users], [peers], [pgusher]
# ---------------------------------------------------------------------------------------------


def test_users(write: Writer) -> None:
    cfg = load(write, (
        "[pgbouncer]\n[users]\n"
        "alice = pool_mode=session\n"
        "Bob = pool_size=5 reserve_pool_size=1 max_user_connections=9 "
        "max_user_client_connections=50 query_timeout=30 idle_transaction_timeout=1min "
        "client_idle_timeout=0\n"
    ))
    assert cfg.users["alice"] == UserEntry(name="alice", pool_mode="session",
                                           raw={"pool_mode": "session"})
    b = cfg.users["Bob"]
    assert (b.pool_size, b.reserve_pool_size, b.max_user_connections,
            b.max_user_client_connections) == (5, 1, 9, 50)
    assert (b.query_timeout, b.idle_transaction_timeout, b.client_idle_timeout) == (
        30.0, 60.0, 0.0)
    assert b.pool_mode is None


def test_users_errors(write: Writer) -> None:
    msg = config_error(write, "[pgbouncer]\n[users]\nbob = host=x\n")
    assert ":3: unknown parameter 'host' in user 'bob': 'x'" in msg
    msg = config_error(write, "[pgbouncer]\n[users]\nbob = pool_size=many\n")
    assert "invalid value for parameter 'pool_size' in user 'bob': 'many'" in msg


def test_peers(write: Writer) -> None:
    cfg = load(write, (
        "[pgbouncer]\npeer_id = 1\n[peers]\n"
        "1 = host=/tmp/pgbouncer1\n"
        "2 = host=10.0.0.2 port=5555 pool_size=4\n"
    ))
    assert cfg.settings.peer_id == 1
    assert cfg.peers[1] == PeerEntry(peer_id=1, host="/tmp/pgbouncer1",
                                     raw={"host": "/tmp/pgbouncer1"})
    p2 = cfg.peers[2]
    assert (p2.host, p2.port, p2.pool_size) == ("10.0.0.2", 5555, 4)
    assert cfg.peers[1].port == 6432


@pytest.mark.parametrize(("line", "fragment"), [
    ("abc = host=x", "invalid peer id 'abc'"),
    ("0 = host=x", "invalid peer id '0'"),
    ("16384 = host=x", "invalid peer id '16384'"),
    ("3 = dbname=x", "unknown parameter 'dbname' in peer '3'"),
    ("3 = port=x", "invalid value for parameter 'port' in peer '3'"),
])
def test_peers_errors(write: Writer, line: str, fragment: str) -> None:
    path = write(f"[pgbouncer]\n[peers]\n{line}\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(info.value).startswith(f"{path}:3: ")
    assert fragment in str(info.value)


def test_pgusher_section(write: Writer) -> None:
    cfg = load(write, "[pgbouncer]\n")
    assert cfg.pgusher == PgusherSettings()
    assert (cfg.pgusher.http_port, cfg.pgusher.http_addr, cfg.pgusher.workers,
            cfg.pgusher.auth_fail_delay) == (0, "127.0.0.1", "1", 0.0)
    path = write("[pgusher]\nhttp_port = 9127\nhttp_addr = 0.0.0.0\nworkers = AUTO\n"
                 "auth_fail_delay = 250ms\nshiny = 1\n[pgbouncer]\n")
    cfg = load_config(str(path))
    assert (cfg.pgusher.http_port, cfg.pgusher.http_addr, cfg.pgusher.workers,
            cfg.pgusher.auth_fail_delay) == (9127, "0.0.0.0", "auto", 0.25)
    assert cfg.warnings == [f"{path}:6: unknown parameter 'shiny' in section [pgusher], "
                            "ignored"]
    assert load_main(write, "").pgusher.workers == "1"
    assert load(write, "[pgusher]\nworkers = 4\n[pgbouncer]\n").pgusher.workers == "4"


@pytest.mark.parametrize(("key", "value"), [
    ("workers", "0"), ("workers", "many"), ("http_port", "99999"), ("auth_fail_delay", "-1"),
])
def test_pgusher_bad_values(write: Writer, key: str, value: str) -> None:
    path = write(f"[pgbouncer]\n[pgusher]\n{key} = {value}\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(info.value).startswith(
        f"{path}:3: invalid value for parameter '{key}': '{value}' (")


# ---------------------------------------------------------------------------------------------
# reload and console-style changes
# ---------------------------------------------------------------------------------------------


def test_reload_changes(write: Writer) -> None:
    old = load(write, "[pgbouncer]\nlisten_port = 6432\npool_mode = session\nverbose = 1\n"
                      "[databases]\na = host=x\n")
    new = load(write, "[pgbouncer]\nlisten_port = 6433\npool_mode = transaction\nverbose = 1\n"
                      "admin_users = root\n[databases]\na = host=y\n")
    changes = old.reload_changes(new)
    assert changes == ["listen_port", "pool_mode", "admin_users"]
    assert [n for n in changes if not SETTINGS_TABLE[n].reloadable] == ["listen_port"]
    assert old.reload_changes(old) == []


def test_apply_setting() -> None:
    s = Settings()
    s2 = apply_setting(s, "Default_Pool_Size", "50")
    assert s2.default_pool_size == 50 and s.default_pool_size == 20
    assert apply_setting(s, "job_name", "x").service_name == "x"
    with pytest.raises(ConfigError, match="unknown parameter 'nope'"):
        apply_setting(s, "nope", "1")
    with pytest.raises(ConfigError, match="invalid value for parameter 'pool_mode': 'x'"):
        apply_setting(s, "pool_mode", "x")


# ---------------------------------------------------------------------------------------------
# a realistic file
# ---------------------------------------------------------------------------------------------

DEBIAN_STYLE_INI = """\
;; database name = connect string
;;
;; connect string params:
;;   dbname= host= port= user= password= auth_user=
;;   client_encoding= datestyle= timezone=
;;   pool_size= reserve_pool= max_db_connections=
;;   pool_mode= connect_query= application_name=
[databases]

;; foodb over Unix socket
;foodb =

;; redirect bardb to bazdb on localhost
;bardb = host=localhost dbname=bazdb

appdb = host=/var/run/postgresql port=5432 dbname=app
reports = host=replica1,replica2 dbname=app pool_size=5 pool_mode=session
legacy = host=10.1.2.3 dbname=old user=legacy_app password='pa ss#word' client_encoding=UTF8
* = host=/var/run/postgresql

;; Configuration section
[users]

;user1 = pool_mode=transaction max_user_connections=10
batch = pool_mode=session pool_size=2

[pgbouncer]

;;;
;;; Administrative settings
;;;

logfile = /var/log/postgresql/pgbouncer.log
pidfile = /var/run/postgresql/pgbouncer.pid

;;;
;;; Where to wait for clients
;;;

;; IP address or * which means all IPs
listen_addr = localhost
listen_port = 6432

;; Unix socket is also used for -R.
;; On Debian it should be /var/run/postgresql
unix_socket_dir = /var/run/postgresql
;unix_socket_mode = 0777
;unix_socket_group =

;;;
;;; TLS settings for accepting clients
;;;

;; disable, allow, require, verify-ca, verify-full
;client_tls_sslmode = disable
;client_tls_ca_file = <system default>
;client_tls_key_file =
;client_tls_cert_file =
;client_tls_ciphers = default
;client_tls_protocols = secure

;;;
;;; Authentication settings
;;;

;; any, trust, plain, md5, cert, hba, pam
auth_type = md5
auth_file = /etc/pgbouncer/userlist.txt
;auth_hba_file =
;auth_user =
;auth_query = SELECT usename, passwd FROM pg_shadow WHERE usename=$1

;;;
;;; Users allowed into database 'pgbouncer'
;;;

admin_users = postgres
stats_users = stats, postgres

;;;
;;; Pooler personality questions
;;;

pool_mode = transaction
server_reset_query = DISCARD ALL
;server_reset_query_always = 0
ignore_startup_parameters = extra_float_digits
;server_check_query = select 1
;server_check_delay = 30
;application_name_add_host = 0
max_prepared_statements = 100

;;;
;;; Connection limits
;;;

max_client_conn = 500
default_pool_size = 25
;min_pool_size = 0
reserve_pool_size = 5
reserve_pool_timeout = 3
;max_db_connections = 0
;max_user_connections = 0
server_round_robin = 0
;syslog = 0
;syslog_facility = daemon
;syslog_ident = pgbouncer

;;;
;;; Logging
;;;

log_connections = 1
log_disconnections = 1
log_pooler_errors = 1
;log_stats = 1
stats_period = 60
;verbose = 0

;;;
;;; Timeouts
;;;

server_lifetime = 3600
server_idle_timeout = 600
server_connect_timeout = 15
server_login_retry = 15
query_timeout = 0
query_wait_timeout = 120
;cancel_wait_timeout = 10
client_idle_timeout = 0
client_login_timeout = 60
autodb_idle_timeout = 3600
;suspend_timeout = 10
idle_transaction_timeout = 0

;;;
;;; Low-level tuning options
;;;

pkt_buf = 4096
listen_backlog = 128
;sbuf_loopcnt = 5
;max_packet_size = 2147483647
;so_reuseport = 0
;tcp_defer_accept = 0
;tcp_socket_buffer = 0
tcp_keepalive = 1
;tcp_keepcnt = 0
tcp_keepidle = 600
;tcp_keepintvl = 0
;tcp_user_timeout = 0
dns_max_ttl = 15
;dns_zone_check_period = 0
dns_nxdomain_ttl = 15

;;;
;;; Random stuff
;;;

;; Hackish security feature.  Helps against SQL injection: when PQexec
;; is disabled, multi-statement cannot be made.
;disable_pqexec = 0

;; Config file to use for next RELOAD/SIGHUP
;; By default contains config file from command line.
;conffile

;; Windows service name to register as.  job_name is alias for
;; service_name, used by some Skytools scripts.
;service_name = pgbouncer
;job_name = pgbouncer

;; Read additional config from other file
;%include /etc/pgbouncer/pgbouncer-other.ini
"""


def test_debian_style_file(write: Writer) -> None:
    cfg = load(write, DEBIAN_STYLE_INI)
    assert cfg.warnings == []
    s = cfg.settings
    assert (s.listen_addr, s.listen_port, s.unix_socket_dir) == (
        "localhost", 6432, "/var/run/postgresql")
    assert (s.logfile, s.pidfile) == ("/var/log/postgresql/pgbouncer.log",
                                      "/var/run/postgresql/pgbouncer.pid")
    assert (s.auth_type, s.auth_file) == ("md5", "/etc/pgbouncer/userlist.txt")
    assert s.admin_users == ["postgres"]
    assert s.stats_users == ["stats", "postgres"]
    assert s.pool_mode == "transaction"
    assert s.ignore_startup_parameters == ["extra_float_digits"]
    assert (s.max_client_conn, s.default_pool_size, s.reserve_pool_size) == (500, 25, 5)
    assert s.reserve_pool_timeout == 3.0
    assert s.max_prepared_statements == 100
    assert s.tcp_keepidle == 600
    assert s.server_round_robin is False
    assert list(cfg.databases) == ["appdb", "reports", "legacy", "*"]
    assert cfg.databases["reports"].host == "replica1,replica2"
    assert cfg.databases["legacy"].password == "pa ss#word"
    assert cfg.databases["*"].dbname is None
    assert cfg.users["batch"].pool_size == 2
    assert cfg.peers == {}
    untouched = {n for n in SETTINGS_TABLE if getattr(s, n) == SETTINGS_TABLE[n].default}
    assert "server_check_query" in untouched and "verbose" in untouched
