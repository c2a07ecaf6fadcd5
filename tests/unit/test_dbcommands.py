"""Which simple queries need a database to themselves, and which database (sans-IO)."""

from __future__ import annotations

import pytest

from pgusher.protocol import messages as m
from pgusher.protocol.dbcommands import database_named


@pytest.mark.parametrize("sql,name", [
    ("DROP DATABASE victim", "victim"),
    ("  drop database if exists Victim", "victim"),
    ('drop database "Mixed ""Case"""', 'Mixed "Case"'),
    ("DROP DATABASE victim WITH (FORCE)", "victim"),
    ("alter database victim rename to other", "victim"),
    ("ALTER DATABASE victim SET TABLESPACE pg_default", "victim"),
    ("create database copy template victim", "victim"),
    ("CREATE DATABASE copy WITH OWNER = me TEMPLATE = tmpl ENCODING 'UTF8'", "tmpl"),
    ("CREATE DATABASE plain", None),
    ("select 'drop database victim'", None),
    ("drop table database_log", None),
    ("select 1", None),
])
def test_database_named(sql: str, name: str | None) -> None:
    assert database_named(m.query(sql)) == name


def test_only_whole_short_simple_queries() -> None:
    assert database_named(b"P" + m.query("drop database x")[1:]) is None
    assert database_named(m.query("drop database x " + " " * 5000)) is None
    assert database_named(b"") is None
