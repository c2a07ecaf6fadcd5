"""User name maps (auth_ident_file) and the HBA parts that use them: ``map=`` and lists
with blanks around their commas."""

from __future__ import annotations

import ipaddress

import pytest

from pgusher.auth.hba import Token, match_hba, parse_hba, tokenize_line
from pgusher.auth.ident import Mapping, map_allows, parse_ident
from pgusher.errors import ConfigError

T = Token

IDENT = """\
# MAPNAME  SYSTEM-USERNAME      PG-USERNAME
test       pgbouncer.acme.org   someuser
test       pgbouncer.acme.org   anotheruser
test2      "bouncer"            all
test2      pgbouncer.acme.org   "anotheruser"
quoted     alice                "all"
"""


def test_parse_ident_whole_and_with_trailing_lines() -> None:
    expected = {
        "test": (Mapping("pgbouncer.acme.org", T("someuser")),
                 Mapping("pgbouncer.acme.org", T("anotheruser"))),
        "test2": (Mapping("bouncer", T("all")),
                  Mapping("pgbouncer.acme.org", T("anotheruser", True))),
        "quoted": (Mapping("alice", T("all", True)),),
    }
    assert parse_ident(IDENT, "ident") == expected
    assert parse_ident(IDENT + "\n# end\n\n", "ident") == expected
    assert parse_ident(IDENT.replace("\n", "\r\n"), "ident") == expected


def test_parse_ident_prefixes_never_crash() -> None:
    for cut in range(len(IDENT) + 1):
        try:
            parse_ident(IDENT[:cut], "f")
        except ConfigError as exc:
            assert exc.message.startswith("f:"), exc.message


@pytest.mark.parametrize("line,error", [
    ("onlytwo fields", "expected MAPNAME SYSTEM-USERNAME PG-USERNAME"),
    ("m a b c", "expected MAPNAME SYSTEM-USERNAME PG-USERNAME"),
    ("m a,b c", "expected MAPNAME SYSTEM-USERNAME PG-USERNAME"),
    ("m /^(.*)$ \\1", "regular expressions are not supported"),
    ('m "unterminated x', "unterminated quoted string"),
])
def test_parse_ident_errors(line: str, error: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_ident("ok sys pg\n" + line + "\n", "pg_ident.conf")
    assert exc.value.message == f"pg_ident.conf:2: {error}"


def test_map_allows() -> None:
    maps = parse_ident(IDENT)
    assert map_allows(maps["test"], "pgbouncer.acme.org", "someuser")
    assert map_allows(maps["test"], "pgbouncer.acme.org", "anotheruser")
    assert not map_allows(maps["test"], "pgbouncer.acme.org", "bouncer")
    assert not map_allows(maps["test"], "other.acme.org", "someuser")
    assert not map_allows(maps["test"], None, "someuser")
    assert map_allows(maps["test2"], "bouncer", "anyone at all")
    assert not map_allows(maps["test2"], "pgbouncer.acme.org", "someuser")
    # a quoted "all" is a user called all, not the keyword
    assert map_allows(maps["quoted"], "alice", "all")
    assert not map_allows(maps["quoted"], "alice", "bob")


def test_blanks_around_commas_make_one_list() -> None:
    assert tokenize_line("host tmp1,all user1,user2 , user3 16.0.0.0/8 md5") == [
        [T("host")], [T("tmp1"), T("all")], [T("user1"), T("user2"), T("user3")],
        [T("16.0.0.0/8")], [T("md5")]]
    rules = parse_hba('host  a ,b  "q , r" ,  s  16.0.0.0/8  md5\n', "h")
    assert rules[0].databases == (T("a"), T("b"))
    assert rules[0].users == (T("q , r", True), T("s"))
    rule = match_hba(rules, local=False, tls=False, database="b", user="s",
                     address=ipaddress.ip_address("16.0.0.1"))
    assert rule is rules[0]


def test_map_option_on_cert_and_peer() -> None:
    rules = parse_hba("hostssl p0x all 0.0.0.0/0 cert map=test\n"
                      "local all all peer map=mymap\n", "h")
    assert [r.map_name for r in rules] == ["test", "mymap"]
    assert rules[0].ident_map is None  # filled in by the loader from auth_ident_file
    with pytest.raises(ConfigError, match='h:1: authentication option "map" is not '
                                          'supported with "md5"'):
        parse_hba("host all all 0.0.0.0/0 md5 map=test\n", "h")
    with pytest.raises(ConfigError, match="h:1: empty ident map name"):
        parse_hba("local all all peer map=\n", "h")
