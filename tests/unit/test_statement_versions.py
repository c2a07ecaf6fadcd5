"""Statements shared by query text across schema changes, driven with no server."""

from __future__ import annotations

import pytest

from pgusher.protocol import messages as m
from pgusher.protocol.framing import ServerStream
from pgusher.protocol.prepared import (
    LinkState,
    Statement,
    Translator,
    schema_generation,
    statement_key,
)


def parse(name: bytes, query: bytes, types: bytes = b"\0\0") -> tuple[int, bytes]:
    return ord("P"), m.message(b"P", name + b"\0" + query + b"\0" + types)


SYNC = (ord("S"), m.SYNC)
PARSE_OK = m.message(b"1")
READY = m.ready_for_query(b"I")


def stream_for(link: LinkState) -> ServerStream:
    stream = ServerStream(lambda *a: None)
    stream.track(link)
    return stream


def test_parse_after_a_change_gets_a_statement_of_its_own() -> None:
    link = LinkState(10)
    mine: dict[bytes, Statement] = {}
    Translator(link, mine).feed([parse(b"s1", b"select * from t"), SYNC])
    stream = stream_for(link)
    stream.feed(PARSE_OK + READY)
    old_key = mine[b"s1"].key
    Translator(link, mine).feed([(ord("Q"), m.query("alter table t add b text"))])
    stream.feed(m.command_complete("ALTER TABLE") + READY)
    theirs: dict[bytes, Statement] = {}
    translator = Translator(link, theirs)
    out = translator.feed([parse(b"s1", b"select * from t"), SYNC])
    assert theirs[b"s1"].key != old_key and not translator.direct  # parsed, not answered
    assert theirs[b"s1"].key.encode() in out


@pytest.mark.parametrize("way", ["whole", "bytes", "split"])
def test_ddl_command_tags_move_the_schema_generation(way: str) -> None:
    reply = (m.command_complete("BEGIN") + m.ready_for_query(b"T")
             + m.command_complete("CREATE TABLE") + m.ready_for_query(b"T")
             + m.command_complete("COMMIT") + READY
             + m.command_complete("SELECT 1") + READY)
    for tracked in (False, True):
        stream = ServerStream(lambda *a: None)
        if tracked:
            link = LinkState(10)
            stream.track(link)
            Translator(link, {}).feed([(ord("Q"), m.query("begin; create table x(); commit"))])
        before = schema_generation()
        chunks = {"whole": [reply], "bytes": [reply[i:i + 1] for i in range(len(reply))],
                  "split": [reply[:17], reply[17:33], reply[33:]]}[way]
        out = b"".join(stream.feed(chunk) for chunk in chunks)
        assert out == reply
        assert schema_generation() == before + 2  # at the command, and at its commit
    before = schema_generation()
    stream = ServerStream(lambda *a: None)
    stream.feed(m.command_complete("SELECT 3") + m.command_complete("INSERT 0 1") + READY)
    assert schema_generation() == before


def test_key_names_the_generation() -> None:
    key = statement_key(b"select 1", b"\0\0")
    assert len(key) < 64 and key.startswith("pgusher_")
    ServerStream(lambda *a: None).feed(m.command_complete("DROP TABLE") + READY)
    assert statement_key(b"select 1", b"\0\0") != key
