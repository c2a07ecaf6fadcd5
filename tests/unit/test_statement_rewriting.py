"""Statement rewriting and reply matching, driven message by message with no server."""

from __future__ import annotations

from pgusher.protocol import messages as m
from pgusher.protocol.framing import ServerStream
from pgusher.protocol.prepared import (
    LinkState,
    SqlStatement,
    Statement,
    Translator,
    answer_without_server,
    statement_key,
    untagged_syncs,
)


def parse(name: bytes, query: bytes) -> tuple[int, bytes]:
    return ord("P"), m.message(b"P", name + b"\0" + query + b"\0\0\0")


def bind(name: bytes) -> tuple[int, bytes]:
    return ord("B"), m.message(b"B", b"\0" + name + b"\0\0\0\0\0\0\0")


SYNC = (ord("S"), m.SYNC)
EXECUTE = (ord("E"), m.message(b"E", b"\0\0\0\0\0"))
PARSE_OK = m.message(b"1")
BIND_OK = m.message(b"2")
# The server's answer to the Describe the pooler sends after the pool's first Parse of a
# text (its parameter types and result row, learned for the Parses on other servers); the
# client does not see it.
LEARNED = m.message(b"t", b"\0\0") + m.message(b"n")


def stream_for(link: LinkState) -> ServerStream:
    stream = ServerStream(lambda *a: None)
    stream.track(link)
    return stream


def test_named_parse_is_renamed_and_bind_follows() -> None:
    link = LinkState(10)
    mine: dict[bytes, Statement] = {}
    out = Translator(link, mine).feed([parse(b"s1", b"select 1"), bind(b"s1"), EXECUTE, SYNC])
    key = statement_key(b"select 1", b"\0\0").encode()
    assert key in out and b"s1\0" not in out
    assert list(link.statements) == [key.decode()]


def test_statement_prepared_on_demand_and_its_reply_swallowed() -> None:
    first = LinkState(10)
    mine: dict[bytes, Statement] = {}
    Translator(first, mine).feed([parse(b"s1", b"select 1"), SYNC])
    other = LinkState(10)  # another server that never saw s1
    out = Translator(other, mine).feed([bind(b"s1"), EXECUTE, SYNC])
    assert out.startswith(b"P")  # a Parse slipped in before the Bind
    stream = stream_for(other)
    reply = (PARSE_OK + LEARNED + BIND_OK + m.command_complete("SELECT 1")
             + m.ready_for_query(b"I"))
    assert stream.feed(reply) == BIND_OK + m.command_complete("SELECT 1") + m.ready_for_query(b"I")
    assert not other.tags


def test_parse_of_known_statement_is_answered_in_order() -> None:
    link = LinkState(10)
    a: dict[bytes, Statement] = {}
    b: dict[bytes, Statement] = {}
    Translator(link, a).feed([parse(b"x", b"select 1"), SYNC])
    stream = stream_for(link)
    stream.feed(PARSE_OK + LEARNED + m.ready_for_query(b"I"))
    translator = Translator(link, b)
    out = translator.feed([parse(b"y", b"select 1"), SYNC])
    assert out == m.SYNC and translator.direct == PARSE_OK  # nothing ahead of it


def test_duplicate_name_becomes_an_in_sequence_error() -> None:
    link = LinkState(10)
    mine: dict[bytes, Statement] = {}
    Translator(link, mine).feed([parse(b"d", b"select 1"), SYNC])
    stream = stream_for(link)
    stream.feed(PARSE_OK + LEARNED + m.ready_for_query(b"I"))
    out = Translator(link, mine).feed([parse(b"d", b"select 2"), SYNC])
    assert b"pgusher_error" in out
    server_error = m.error_response("ERROR", "42601", "syntax error")
    shown = stream.feed(server_error + m.ready_for_query(b"I"))
    assert b"42P05" in shown and b"42601" not in shown
    assert shown.endswith(m.ready_for_query(b"I"))


def test_failed_parse_registers_nothing() -> None:
    link = LinkState(10)
    mine: dict[bytes, Statement] = {}
    Translator(link, mine).feed([parse(b"bad", b"select from"), bind(b"bad"), SYNC])
    stream = stream_for(link)
    stream.feed(m.error_response("ERROR", "42601", "syntax error") + m.ready_for_query(b"I"))
    assert b"bad" not in mine and not link.statements and not link.tags


def test_eviction_closes_the_oldest() -> None:
    link = LinkState(2)
    mine: dict[bytes, Statement] = {}
    out = Translator(link, mine).feed([parse(b"a", b"select 1"), parse(b"b", b"select 2"),
                                       parse(b"c", b"select 3"), SYNC])
    assert out.count(b"C\0\0\0") == 1 and len(link.statements) == 2


def describe(kind: bytes, name: bytes = b"") -> tuple[int, bytes]:
    return ord("D"), m.message(b"D", kind + name + b"\0")


def test_unnamed_batch_goes_untagged() -> None:
    batch = [parse(b"", b"select $1"), bind(b""), describe(b"P"), EXECUTE, SYNC]
    assert untagged_syncs(batch) == 1
    assert untagged_syncs(batch + batch) == 2
    assert untagged_syncs([*batch[:-1], (ord("H"), m.message(b"H")), SYNC]) == 1
    assert untagged_syncs([describe(b"S"), SYNC]) == 1  # the unnamed statement


def test_batches_needing_tags_are_not_untagged() -> None:
    assert untagged_syncs([parse(b"", b"select 1"), bind(b""), EXECUTE]) == 0  # no Sync yet
    assert untagged_syncs([parse(b"s1", b"select 1"), SYNC]) == 0  # renamed
    assert untagged_syncs([bind(b"s1"), EXECUTE, SYNC]) == 0
    assert untagged_syncs([describe(b"S", b"s1"), SYNC]) == 0
    assert untagged_syncs([parse(b"", b"set search_path = x"), bind(b""), EXECUTE, SYNC]) == 0
    assert untagged_syncs([(ord("Q"), m.query("select 1")), SYNC]) == 0
    assert untagged_syncs([(ord("C"), m.message(b"C", b"Ss1\0")), SYNC]) == 0
    assert untagged_syncs([(ord("P"), m.message(b"P", b"")), SYNC]) == 0  # malformed


def test_untagged_batch_replies_are_counted_on_the_fast_path() -> None:
    link = LinkState(10)
    batch = [parse(b"", b"select 1"), bind(b""), EXECUTE, SYNC]
    link.untagged_z += untagged_syncs(batch)
    stream = stream_for(link)
    error = m.error_response("ERROR", "22012", "division by zero")
    reply = PARSE_OK + BIND_OK + error + m.ready_for_query(b"I")
    assert stream.feed(reply) == reply
    assert stream.ready == 1 and link.untagged_z == 0 and not link.tags
    # A tagged batch behind untagged work waits for that work's ReadyForQuery first.
    link.untagged_z += untagged_syncs(batch)
    Translator(link, {}).feed([parse(b"s1", b"select 1"), SYNC])
    out = stream.feed(reply + PARSE_OK + LEARNED + m.ready_for_query(b"I"))
    assert out == reply + PARSE_OK + m.ready_for_query(b"I")
    assert stream.ready == 2 and not link.tags and list(link.statements)


def test_bind_and_describe_rewritten_exactly() -> None:
    link = LinkState(10)
    mine: dict[bytes, Statement] = {}
    Translator(link, mine).feed([parse(b"s1", b"select $1"), SYNC])
    key = statement_key(b"select $1", b"\0\0").encode()
    rest = b"\0\x01\0\0\0\0\0\x03abc\0\x01\0\0"
    bind_msg = (ord("B"), m.message(b"B", b"portal\0s1\0" + rest))
    out = Translator(link, mine).feed([bind_msg, describe(b"S", b"s1"), EXECUTE, SYNC])
    assert out == (m.message(b"B", b"portal\0" + key + b"\0" + rest)
                   + m.message(b"D", b"S" + key + b"\0") + EXECUTE[1] + m.SYNC)


def test_idle_client_answered_without_server() -> None:
    known = {statement_key(b"select 1", b"\0\0")}
    mine: dict[bytes, Statement] = {}
    reply = answer_without_server([parse(b"p", b"select 1"), SYNC], mine, known)
    assert reply == PARSE_OK + m.ready_for_query(b"I") and b"p" in mine
    assert answer_without_server([parse(b"q", b"select 2"), SYNC], mine, known) is None
    assert b"q" not in mine


def test_idle_client_messages_without_reply_need_no_server() -> None:
    """Flush, or copy messages after the COPY ended, from a client with no server: no server
    would answer them, so no ReadyForQuery would ever release one linked for them."""
    flush = (ord("H"), m.message(b"H"))
    copy_data = (ord("d"), m.message(b"d", b"1\n"))
    copy_piece = (0, b"2\n")  # the rest of a CopyData cut by the chunk
    copy_done = (ord("c"), m.message(b"c"))
    copy_fail = (ord("f"), m.message(b"f", b"stop\0"))
    mine: dict[bytes, Statement] = {}
    assert answer_without_server([flush], mine, set()) == b""
    assert answer_without_server([copy_piece, copy_data, copy_done], mine, set()) == b""
    assert answer_without_server([copy_fail, flush], mine, set()) == b""
    assert answer_without_server([flush, SYNC], mine, set()) == m.ready_for_query(b"I")
    assert answer_without_server([flush, bind(b"p"), EXECUTE, SYNC], mine, set()) is None
    assert not mine


COMMIT_FAILED = m.error_response("ERROR", "23505", "duplicate key value violates unique constraint")


def test_error_at_sync_skips_nothing() -> None:
    """An error raised while the server runs a Sync (a deferred constraint checked at the
    implicit commit) is followed by that Sync's own ReadyForQuery: nothing was skipped, and
    the next batch must still be rewritten."""
    link = LinkState(10)
    mine: dict[bytes, Statement] = {}
    key = statement_key(b"insert", b"\0\0").encode()
    Translator(link, mine).feed([parse(b"s1", b"insert"), SYNC])
    stream = stream_for(link)
    stream.feed(PARSE_OK + LEARNED + m.ready_for_query(b"I"))
    Translator(link, mine).feed([bind(b"s1"), EXECUTE, SYNC])
    reply = (BIND_OK + m.command_complete("INSERT 0 1") + COMMIT_FAILED
             + m.ready_for_query(b"I"))
    assert stream.feed(reply) == reply and stream.ready == 1
    assert not link.tags and not link.skipping and b"s1" in mine
    out = Translator(link, mine).feed([bind(b"s1"), EXECUTE, SYNC])
    assert key in out and b"s1\0" not in out


def test_error_at_sync_keeps_the_next_batch_tags() -> None:
    """The same with the next batch already sent: its tags must all stay in place."""
    link = LinkState(10)
    mine: dict[bytes, Statement] = {}
    Translator(link, mine).feed([parse(b"s1", b"insert"), bind(b"s1"), EXECUTE, SYNC])
    out = Translator(link, mine).feed([parse(b"s2", b"select 2"), bind(b"s1"), EXECUTE, SYNC])
    assert b"s1\0" not in out and b"s2\0" not in out
    stream = stream_for(link)
    first = (BIND_OK + m.command_complete("INSERT 0 1") + COMMIT_FAILED
             + m.ready_for_query(b"I"))
    second = BIND_OK + m.command_complete("INSERT 0 1") + m.ready_for_query(b"I")
    reply = PARSE_OK + LEARNED + first + PARSE_OK + LEARNED + second
    assert stream.feed(reply) == PARSE_OK + first + PARSE_OK + second and stream.ready == 2
    assert not link.tags and not link.skipping and len(link.statements) == 2
    assert b"s1" in mine and b"s2" in mine


def test_error_in_simple_query_skips_nothing() -> None:
    """A simple query's error (here at its COMMIT) ends with that query's ReadyForQuery."""
    link = LinkState(10)
    mine: dict[bytes, Statement] = {}
    key = statement_key(b"insert", b"\0\0").encode()
    Translator(link, mine).feed([parse(b"s1", b"insert"), SYNC])
    out = Translator(link, mine).feed([(ord("Q"), m.query("commit"))])
    assert out == m.query("commit") and len(link.tags) == 4  # tagged: tags are pending
    stream = stream_for(link)
    reply = (PARSE_OK + m.ready_for_query(b"I") + COMMIT_FAILED + m.ready_for_query(b"I"))
    assert stream.feed(PARSE_OK + LEARNED + reply[5:]) == reply and stream.ready == 2
    assert not link.tags and not link.skipping and b"s1" in mine
    out = Translator(link, mine).feed([bind(b"s1"), EXECUTE, SYNC])
    assert key in out and b"s1\0" not in out


def _after_skip_batch() -> tuple[LinkState, ServerStream, bytes]:
    """s1 on the server; then Bind s1, Execute, a Parse the pooler answers itself (its text is
    known), Sync. The pooler's ParseComplete must come right after the CommandComplete."""
    link = LinkState(10)
    mine: dict[bytes, Statement] = {}
    stream = stream_for(link)
    Translator(link, mine).feed([parse(b"s1", b"select 1"), SYNC])
    stream.feed(PARSE_OK + LEARNED + m.ready_for_query(b"I"))
    translator = Translator(link, mine)
    translator.feed([bind(b"s1"), EXECUTE, parse(b"s2", b"select 1"), SYNC])
    assert not translator.direct  # queued behind the Bind and the Execute
    return link, stream, BIND_OK + m.command_complete("SELECT 1") + m.ready_for_query(b"I")


def _feed_chunks(stream: ServerStream, chunks: list[bytes]) -> bytes:
    return b"".join(stream.feed(chunk) for chunk in chunks)


def _check_after_skip(chunks: list[bytes]) -> None:
    link, stream, reply = _after_skip_batch()
    assert b"".join(chunks) == reply
    out = _feed_chunks(stream, chunks)
    cut = len(BIND_OK) + len(m.command_complete("SELECT 1"))
    assert out == reply[:cut] + PARSE_OK + reply[cut:]
    assert not link.tags and stream.at_boundary and not stream._after_skip


def test_reply_added_after_a_body_that_ends_at_a_chunk_end() -> None:
    """The CommandComplete's body straddles two chunks and ends where the second one does."""
    _, _, reply = _after_skip_batch()
    body_cut = len(BIND_OK) + 8  # the CommandComplete's header and part of its body
    _check_after_skip([reply[:body_cut], reply[body_cut:-6], reply[-6:]])


def test_reply_added_after_a_cut_body_whole_and_byte_by_byte() -> None:
    _, _, reply = _after_skip_batch()
    _check_after_skip([reply])
    _check_after_skip([reply[i:i + 1] for i in range(len(reply))])


def test_reply_added_after_a_cut_body_at_every_split() -> None:
    _, _, reply = _after_skip_batch()
    for i in range(1, len(reply)):
        _check_after_skip([reply[:i], reply[i:]])
        for j in range(i + 1, len(reply)):
            _check_after_skip([reply[:i], reply[i:j], reply[j:]])



def test_pooler_query_reply_dropped_at_every_split() -> None:
    """The replies of a query the pooler slipped in (a PREPARE for a statement this server
    lacks) are dropped even when a body is cut by the chunk."""
    sql: dict[str, SqlStatement] = {}
    first = LinkState(10)
    Translator(first, {}, sql, "c1").feed([(ord("Q"), m.query("PREPARE foo AS select 1"))])
    shown = (m.row_description([("x", 23)]) + m.data_row(["1"]) + m.command_complete("SELECT 1")
             + m.ready_for_query(b"I"))
    reply = m.command_complete("PREPARE") + m.ready_for_query(b"I") + shown
    for i in range(len(reply) + 1):
        link = LinkState(10)  # another server, which lacks foo
        out = Translator(link, {}, sql, "c1").feed([(ord("Q"), m.query("EXECUTE foo"))])
        assert out.startswith(b"Q") and out.count(b"Q") == 2  # PREPARE, then EXECUTE
        stream = stream_for(link)
        assert _feed_chunks(stream, [reply[:i], reply[i:]]) == shown, i
        assert not link.tags and stream.at_boundary


def test_sql_deallocate_of_a_protocol_name_uses_a_stand_in() -> None:
    """The server-side statement is shared: the client's name goes, the server's stays, and
    the server deallocates a stand-in so that the reply is DEALLOCATE's own."""
    link = LinkState(10)
    mine: dict[bytes, Statement] = {}
    stream = stream_for(link)
    Translator(link, mine).feed([parse(b"_pg3_0", b"select 1"), SYNC])
    stream.feed(PARSE_OK + LEARNED + m.ready_for_query(b"I"))
    out = Translator(link, mine).feed([(ord("Q"), m.query("DEALLOCATE _pg3_0"))])
    assert b"_pg3_0" not in out and b"pgusher_deallocate" in out
    assert b"_pg3_0" not in mine and len(link.statements) == 1
    reply = (m.message(b"3") + m.command_complete("PREPARE") + m.ready_for_query(b"I")
             + m.command_complete("DEALLOCATE") + m.ready_for_query(b"I"))
    assert stream.feed(reply) == m.command_complete("DEALLOCATE") + m.ready_for_query(b"I")
    assert stream.ready == 1 and not link.tags


def test_failed_sql_deallocate_keeps_the_name() -> None:
    link = LinkState(10)
    mine: dict[bytes, Statement] = {}
    stream = stream_for(link)
    Translator(link, mine).feed([parse(b"s1", b"select 1"), SYNC])
    stream.feed(PARSE_OK + LEARNED + m.ready_for_query(b"I"))
    Translator(link, mine).feed([(ord("Q"), m.query("deallocate prepare s1"))])
    aborted = m.error_response("ERROR", "25P02", "current transaction is aborted")
    reply = (m.message(b"3") + aborted + m.ready_for_query(b"E") + aborted
             + m.ready_for_query(b"E"))
    assert stream.feed(reply) == aborted + m.ready_for_query(b"E")
    assert b"s1" in mine and not link.tags


def test_sql_deallocate_skipped_after_an_error_keeps_the_name() -> None:
    """An error earlier in the batch makes the server skip the DEALLOCATE up to the Sync."""
    link = LinkState(10)
    mine: dict[bytes, Statement] = {}
    stream = stream_for(link)
    Translator(link, mine).feed([parse(b"s1", b"select 1"), SYNC])
    stream.feed(PARSE_OK + LEARNED + m.ready_for_query(b"I"))
    Translator(link, mine).feed([parse(b"bad", b"select from"),
                                 (ord("P"), m.message(b"P", b"\0DEALLOCATE s1\0\0\0")),
                                 bind(b""), EXECUTE, (ord("Q"), m.query("DEALLOCATE s1")),
                                 SYNC])
    assert b"s1" not in mine
    error = m.error_response("ERROR", "42601", "syntax error")
    assert stream.feed(error + m.ready_for_query(b"I")) == error + m.ready_for_query(b"I")
    assert b"s1" in mine and b"bad" not in mine and not link.tags
    assert link.lost_queries == 1


def test_failed_deallocate_all_keeps_the_names() -> None:
    link = LinkState(10)
    mine: dict[bytes, Statement] = {}
    stream = stream_for(link)
    Translator(link, mine).feed([parse(b"s1", b"select 1"), SYNC])
    stream.feed(PARSE_OK + LEARNED + m.ready_for_query(b"I"))
    for text in ("DEALLOCATE ALL", "discard all"):
        Translator(link, mine).feed([(ord("Q"), m.query(text))])
        assert not mine
        error = m.error_response("ERROR", "25001", "cannot run inside a transaction block")
        assert stream.feed(error + m.ready_for_query(b"E")) == error + m.ready_for_query(b"E")
        assert b"s1" in mine and list(link.statements) and not link.needs_reset
    # Of several statements, the failing one may have come after it: reset the server.
    Translator(link, mine).feed([(ord("Q"), m.query("deallocate all; select 1/0"))])
    error = m.error_response("ERROR", "22012", "division by zero")
    stream.feed(error + m.ready_for_query(b"I"))
    assert not mine and link.needs_reset
