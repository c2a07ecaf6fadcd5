"""pg_hba.conf parsing (exact results and exact errors) and first-match-wins matching."""

from __future__ import annotations

import ipaddress

import pytest

from pgusher.auth.auth_query import LookupSession, lookup_messages, parse_data_row
from pgusher.auth.hba import HbaRule, Token, match_hba, parse_hba, tokenize_line
from pgusher.auth.passthrough import ScramKeyStore
from pgusher.auth.scram import ScramServer, format_scram_secret, make_scram_secret
from pgusher.errors import ConfigError, ProtocolError
from pgusher.protocol import messages as m

T = Token


def test_tokenize_quotes_commas_and_comments() -> None:
    assert tokenize_line('host "all",b, c  u  ::1/128 md5 # note') == [
        [T("host")], [T("all", True), T("b"), T("c")], [T("u")], [T("::1/128")], [T("md5")]]
    assert tokenize_line('local "a ""b"" c" all trust') == [
        [T("local")], [T('a "b" c', True)], [T("all")], [T("trust")]]
    assert tokenize_line("   # only a comment") == []


def test_parse_whole_file() -> None:
    text = ("# comment\n"
            "local   all  all  peer\n"
            "\n"
            "hostssl app,\"all\" alice,bob 10.0.0.0/8 scram-sha-256 clientcert=verify-ca\n"
            "host all all 192.168.1.7 255.255.255.0 md5\r\n"
            "hostnossl sameuser all all \\\n"
            "    reject\n"
            "hostssl all all ::1/128 cert\n")
    rules = parse_hba(text, "hba.conf")
    assert rules == [
        HbaRule(2, "local", (T("all"),), (T("all"),), None, "peer"),
        HbaRule(4, "hostssl", (T("app"), T("all", True)), (T("alice"), T("bob")),
                ipaddress.ip_network("10.0.0.0/8"), "scram-sha-256",
                {"clientcert": "verify-ca"}),
        HbaRule(5, "host", (T("all"),), (T("all"),), ipaddress.ip_network("192.168.1.0/24"),
                "md5"),
        HbaRule(6, "hostnossl", (T("sameuser"),), (T("all"),), None, "reject"),
        HbaRule(8, "hostssl", (T("all"),), (T("all"),), ipaddress.ip_network("::1/128"),
                "cert"),
    ]
    assert rules[1].clientcert == "verify-ca" and rules[4].clientcert == "verify-full"


def test_parse_byte_by_byte_prefixes_never_crash() -> None:
    text = 'host "db" u1,u2 127.0.0.1/32 md5\nlocal all all trust\n'
    for cut in range(len(text) + 1):
        try:
            parse_hba(text[:cut], "f")
        except ConfigError as exc:
            assert exc.message.startswith("f:"), exc.message
    assert len(parse_hba(text + "# trailing\n\n", "f")) == 2


@pytest.mark.parametrize("line,error", [
    ("hosts all all all md5", 'invalid connection type "hosts"'),
    ("host all", "end of line before the role"),
    ("host all all", "end of line before the client address"),
    ("host all all 127.0.0.1/32", "end of line before the authentication method"),
    ("host all all 127.0.0.1/33 md5", 'invalid IP address or mask "127.0.0.1/33"'),
    ("host all all db.example md5", 'host names are not supported: "db.example"'),
    ("host all all 127.0.0.1 md5", 'invalid IP mask "md5"'),
    ("host all all 127.0.0.1 ffff::0 md5", "IP address and mask do not match"),
    ("host all all samenet md5", "samenet is not supported"),
    ("host all all all ident", 'authentication method "ident" is not supported'),
    ("host all all all magic", 'invalid authentication method "magic"'),
    ("host all all all peer", "peer authentication is only supported on local sockets"),
    ("hostnossl all all all cert", "cert authentication is only supported on TLS connections"),
    ("host all +admins all md5", "group membership (+admins) is not supported"),
    ("host samerole all all md5", "samerole is not supported"),
    ("host all all all md5 map=x",
     'authentication option "map" is not supported with "md5"'),
    ("host all all all md5 clientcert", 'authentication option not in name=value format: '
                                        '"clientcert"'),
    ("host all all all md5 clientcert=verify-ca",
     "clientcert can only be configured for hostssl rows"),
    ("hostssl all all all md5 clientcert=yes", 'invalid value for clientcert: "yes"'),
    ("hostssl all all all cert clientcert=verify-ca",
     "clientcert only accepts verify-full with cert authentication"),
    ('host "all all all md5', "unterminated quoted string"),
    ("host all all 10.0.0.0/8,::1/128 md5", "multiple values in the address field"),
    ("host all all, # x", "end of line after a comma"),
    ("host @ all all md5", "empty file name after @ in the database field"),
])
def test_parse_errors_name_file_and_line(line: str, error: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_hba("local all all trust\n# two\n" + line + "\n", "/etc/hba.conf")
    assert exc.value.message == f"/etc/hba.conf:3: {error}"


def test_include_files() -> None:
    files = {"dbs": "app, reports\n# comment\n@more", "more": "extra", "users": "alice bob"}
    rules = parse_hba("host @dbs @users all md5\n", "h", files.__getitem__)
    assert rules[0].databases == (T("app"), T("reports"), T("extra"))
    assert rules[0].users == (T("alice"), T("bob"))

    def missing(name: str) -> str:
        raise FileNotFoundError(2, "No such file or directory")

    with pytest.raises(ConfigError, match=r"^h:1: could not read @nope: No such file"):
        parse_hba("host @nope all all md5", "h", missing)
    with pytest.raises(ConfigError, match="nested too deeply"):
        parse_hba("host @loop all all md5", "h", {"loop": "@loop"}.__getitem__)


RULES = parse_hba("""\
local   all       all                  peer
hostssl app       alice  10.0.0.0/8     cert
host    app       alice  10.0.0.0/8     reject
host    sameuser  all    0.0.0.0/0      md5
host    "all"     all    all            password
hostnossl all     all    ::/0           scram-sha-256
host    all       all    all            trust
""", "hba")


@pytest.mark.parametrize("local,tls,db,user,addr,line", [
    (True, False, "app", "alice", None, 1),
    (False, True, "app", "alice", "10.1.2.3", 2),
    (False, False, "app", "alice", "10.1.2.3", 3),
    (False, False, "bob", "bob", "192.0.2.1", 4),
    (False, False, "all", "bob", "192.0.2.1", 5),  # "all" quoted: a database named all
    (False, False, "app", "bob", "::ffff:192.0.2.1", 7),  # v4-mapped is matched as IPv4
    (False, False, "app", "bob", "2001:db8::1", 6),
    (False, True, "app", "bob", "2001:db8::1", 7),
])
def test_first_match_wins(local: bool, tls: bool, db: str, user: str, addr: str | None,
                          line: int) -> None:
    address = ipaddress.ip_address(addr) if addr else None
    rule = match_hba(RULES, local=local, tls=tls, database=db, user=user, address=address)
    assert rule is not None and rule.lineno == line


def test_no_match_rejects() -> None:
    rules = parse_hba("host app alice 127.0.0.1/32 md5\n", "h")
    assert match_hba(rules, local=False, tls=False, database="app", user="bob",
                     address=ipaddress.ip_address("127.0.0.1")) is None
    assert match_hba(rules, local=True, tls=False, database="app", user="alice",
                     address=None) is None
    assert match_hba(rules, local=False, tls=False, database="app", user="alice",
                     address=ipaddress.ip_address("127.0.0.2")) is None


# ---------------------------------------------------------------------------------- auth_query


def test_lookup_sends_the_name_as_a_parameter() -> None:
    evil = "x'; drop table t; --"
    data = lookup_messages("SELECT $1", evil)
    assert data.startswith(b"P") and b"SELECT $1\x00" in data
    assert evil.encode() in data and b"drop table" not in data.split(b"B")[0]
    assert data.endswith(b"S\x00\x00\x00\x04")


def test_parse_data_row() -> None:
    body = b"\x00\x02" + b"\x00\x00\x00\x01a" + b"\xff\xff\xff\xff"
    assert parse_data_row(body) == [b"a", None]
    for bad in (body[:-1], body + b"x", b"\x00"):
        with pytest.raises(Exception, match="invalid DataRow"):
            parse_data_row(bad)


def _msg(kind: bytes, body: bytes) -> bytes:
    return kind + (len(body) + 4).to_bytes(4, "big") + body


def test_lookup_session_fed_byte_by_byte() -> None:
    session = LookupSession("auth", "app", "pw")
    session.startup()
    login = _msg(b"R", b"\x00\x00\x00\x00") + _msg(b"Z", b"I")
    events = [e for b in login for e in session.feed(bytes([b]))]
    assert [e.kind for e in events] == ["ready"]
    session.lookup("q", "alice")
    reply = (_msg(b"1", b"") + _msg(b"2", b"")
             + _msg(b"D", b"\x00\x02\x00\x00\x00\x05alice\x00\x00\x00\x06md5abc")
             + _msg(b"C", b"SELECT 1\x00") + _msg(b"Z", b"I"))
    events = [e for b in reply for e in session.feed(bytes([b]))]
    assert [(e.kind, e.found, e.secret) for e in events] == [("ready", True, "md5abc")]
    session.lookup("q", "nobody")
    events = session.feed(_msg(b"1", b"") + _msg(b"2", b"") + _msg(b"C", b"SELECT 0\x00")
                          + _msg(b"Z", b"I"))
    assert [(e.kind, e.found) for e in events] == [("ready", False)]


def test_lookup_session_login_failures() -> None:
    """The login is ServerLogin's; the texts name auth_user."""
    session = LookupSession("auth", "app", None)
    events = session.feed(_msg(b"R", b"\x00\x00\x00\x05salt"))
    assert [e.kind for e in events] == ["failed"]
    assert events[0].error is not None
    assert events[0].error.message == 'no password known for auth_user "auth"'
    assert session.feed(_msg(b"Z", b"I")) == []  # a failed session takes nothing more
    secret = format_scram_secret(make_scram_secret("pw"))
    session = LookupSession("auth", "app", secret)
    events = session.feed(_msg(b"R", b"\x00\x00\x00\x0aSCRAM-SHA-256\x00\x00"))
    assert events[0].error is not None
    assert "only a SCRAM secret is known" in events[0].error.message
    assert events[0].login_failed == ""  # the pooler gave up, the server said nothing
    session = LookupSession("auth", "app", "pw")
    events = session.feed(m.error_response("FATAL", "28P01", "password authentication failed"))
    assert events[0].error is not None
    assert events[0].error.message == "password authentication failed"
    assert events[0].login_failed == "FATAL"  # the server's word, for the log line
    session = LookupSession("auth", "app", "pw")
    events = session.feed(b"R\xff\xff\xff\xff")
    assert events[0].error is not None
    assert events[0].error.message == "invalid packet from server during login"


def test_lookup_session_after_login_keeps_its_own_bound() -> None:
    session = LookupSession("auth", "app", "pw")
    assert [e.kind for e in session.feed(_msg(b"R", b"\x00" * 4) + _msg(b"Z", b"I"))] == ["ready"]
    session.lookup("q", "alice")
    events = session.feed(_msg(b"1", b"") + b"D\x00\x00\x00\x02")
    assert [e.kind for e in events] == ["failed"]
    assert events[0].error is not None
    assert events[0].error.message == "invalid packet from server"
    assert events[0].login_failed is None  # a failure after the login
    with pytest.raises(ProtocolError, match="lookup while the session is failed"):
        session.lookup("q", "bob")


# ---------------------------------------------------------------------------------- pass-through


def test_key_store_keeps_only_matching_keys() -> None:
    secret_obj = make_scram_secret("pw")
    secret = format_scram_secret(secret_obj)
    store = ScramKeyStore()
    store.remember_password("u", secret, "wrong")
    assert store.keys_for("u", secret) is None
    store.remember_password("u", secret, "pw")
    keys = store.keys_for("u", secret)
    assert keys is not None and keys[1] == secret_obj.server_key
    assert store.keys_for("u", format_scram_secret(make_scram_secret("pw"))) is None
    server = ScramServer(secret)
    assert server.client_key is None
