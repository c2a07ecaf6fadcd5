"""Statement rewriting and reply matching, driven message by message with no server."""

from __future__ import annotations

from pgusher.protocol import messages as m
from pgusher.protocol.framing import ServerStream
from pgusher.protocol.link import LinkState
from pgusher.protocol.prepared import SqlStatement, Statement, statement_key
from pgusher.protocol.shortcuts import answer_without_server, untagged_syncs
from pgusher.protocol.translator import Translator


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
    # The text is parsed first, under a stand-in name (and closed again): its own error
    # (a syntax error, an aborted transaction) would come before the name's.
    assert out.startswith(m.message(b"P", b"pgusher_duplicate\0select 2\0\0\0"))
    server_error = m.error_response("ERROR", "42601", "syntax error")
    shown = stream.feed(PARSE_OK + m.message(b"3") + server_error + m.ready_for_query(b"I"))
    assert b"42P05" in shown and b"42601" not in shown
    assert shown == m.error_response("ERROR", "42P05", 'prepared statement "d" already exists') \
        + m.ready_for_query(b"I")
    Translator(link, mine).feed([parse(b"d", b"select from"), SYNC])
    shown = stream.feed(server_error + m.ready_for_query(b"I"))
    assert shown == server_error + m.ready_for_query(b"I")  # the text's own error


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
    stream_for(link).feed(PARSE_OK + LEARNED + m.ready_for_query(b"I"))
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
    stream = stream_for(link)
    Translator(link, mine).feed([parse(b"s1", b"insert"), SYNC])
    stream.feed(PARSE_OK + LEARNED + m.ready_for_query(b"I"))
    Translator(link, mine).feed([bind(b"s1"), EXECUTE, SYNC])
    out = Translator(link, mine).feed([parse(b"s2", b"select 2"), bind(b"s1"), EXECUTE, SYNC])
    assert b"s1\0" not in out and b"s2\0" not in out
    first = (BIND_OK + m.command_complete("INSERT 0 1") + COMMIT_FAILED
             + m.ready_for_query(b"I"))
    second = BIND_OK + m.command_complete("INSERT 0 1") + m.ready_for_query(b"I")
    reply = first + PARSE_OK + LEARNED + second
    assert stream.feed(reply) == first + PARSE_OK + second and stream.ready == 2
    assert not link.tags and not link.skipping and len(link.statements) == 2
    assert b"s1" in mine and b"s2" in mine


def test_names_changed_before_an_unanswered_sync_wait_for_its_reply() -> None:
    """A Parse whose name an earlier Parse took, before a Sync not answered yet: that Parse
    may yet be skipped by an error, and then this one is no duplicate. It waits."""
    link = LinkState(10)
    mine: dict[bytes, Statement] = {}
    stream = stream_for(link)
    error = m.error_response("ERROR", "22012", "division by zero")
    Translator(link, mine).feed([bind(b""), EXECUTE, parse(b"s1", b"select 1"), SYNC])
    out = Translator(link, mine).feed([parse(b"s1", b"select 1"), SYNC])
    assert out == m.message(b"H") and link.deferred  # only a Flush: the Parse waits
    assert stream.feed(BIND_OK + error + m.ready_for_query(b"I")) == (
        BIND_OK + error + m.ready_for_query(b"I"))
    assert b"s1" not in mine and not link.tags  # the first Parse was skipped
    waiting = link.take_deferred()
    assert waiting == [parse(b"s1", b"select 1"), SYNC]
    out = Translator(link, mine).feed(waiting)
    assert b"pgusher_error" not in out and b"s1" in mine  # parsed, not a duplicate


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


ROW = m.row_description([("a", 23), ("b", 25)])


def _after_skip_batch() -> tuple[LinkState, ServerStream, bytes]:
    """s1 on the server; then Bind s1, Describe the portal, a Close the pooler answers
    itself, Sync. The pooler's CloseComplete must come right after the RowDescription, a
    reply whose body the scanner streams without reading it."""
    link = LinkState(10)
    mine: dict[bytes, Statement] = {}
    stream = stream_for(link)
    Translator(link, mine).feed([parse(b"s1", b"select 1"), parse(b"s2", b"select 2"), SYNC])
    stream.feed(PARSE_OK + LEARNED + PARSE_OK + LEARNED + m.ready_for_query(b"I"))
    translator = Translator(link, mine)
    close = (ord("C"), m.message(b"C", b"Ss2\0"))
    translator.feed([bind(b"s1"), describe(b"P"), close, SYNC])
    assert not translator.direct  # queued behind the Bind and the Describe
    return link, stream, BIND_OK + ROW + m.ready_for_query(b"I")


def _feed_chunks(stream: ServerStream, chunks: list[bytes]) -> bytes:
    return b"".join(stream.feed(chunk) for chunk in chunks)


def _check_after_skip(chunks: list[bytes]) -> None:
    link, stream, reply = _after_skip_batch()
    assert b"".join(chunks) == reply
    out = _feed_chunks(stream, chunks)
    cut = len(BIND_OK) + len(ROW)
    assert out == reply[:cut] + m.message(b"3") + reply[cut:]
    assert not link.tags and stream.at_boundary and not stream._after_skip


def test_reply_added_after_a_body_that_ends_at_a_chunk_end() -> None:
    """The RowDescription's body straddles two chunks and ends where the second one does."""
    _, _, reply = _after_skip_batch()
    body_cut = len(BIND_OK) + 8  # the RowDescription's header and part of its body
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
        assert b"s1" in mine and not link.needs_reset
        assert mine[b"s1"].key in link.needs_close  # closed, then parsed again, at next use
    # Of several statements, the failing one may have come after it: reset the server.
    Translator(link, mine).feed([(ord("Q"), m.query("deallocate all; select 1/0"))])
    error = m.error_response("ERROR", "22012", "division by zero")
    stream.feed(error + m.ready_for_query(b"I"))
    assert not mine and link.needs_reset


def test_pooler_answer_skipped_after_an_error_takes_back_its_name() -> None:
    """A Close the pooler answers itself, behind an error in the same batch: the server
    skips it, so the name stays, as PostgreSQL would keep it."""
    link = LinkState(10)
    mine: dict[bytes, Statement] = {}
    stream = stream_for(link)
    Translator(link, mine).feed([parse(b"s1", b"select 1"), SYNC])
    stream.feed(PARSE_OK + LEARNED + m.ready_for_query(b"I"))
    close = (ord("C"), m.message(b"C", b"Ss1\0"))
    Translator(link, mine).feed([bind(b"nope"), close, SYNC])
    assert b"s1" not in mine
    error = m.error_response("ERROR", "42601", "syntax error")  # the failing stand-in
    shown = stream.feed(error + m.ready_for_query(b"I"))
    assert b"26000" in shown and m.message(b"3") not in shown
    assert b"s1" in mine and not link.tags


def test_parse_of_a_known_text_fails_in_a_failed_transaction() -> None:
    """With replies still due, the transaction may have failed by the time a Parse runs: a
    Parse of the text already on the server is answered by a stand-in's, which fails where
    the client's would (25P02), and the name is not taken."""
    link = LinkState(10)
    mine: dict[bytes, Statement] = {}
    stream = stream_for(link)
    Translator(link, mine).feed([parse(b"s1", b"select 1"), SYNC])
    stream.feed(PARSE_OK + LEARNED + m.ready_for_query(b"I"))
    Translator(link, mine).feed([(ord("Q"), m.query("select 1/0"))])
    translator = Translator(link, mine)
    out = translator.feed([parse(b"s2", b"select 1"), SYNC])
    assert out.startswith(m.message(b"P", b"pgusher_parse\0select 1\0\0\0"))
    assert not translator.direct
    aborted = m.error_response("ERROR", "25P02", "current transaction is aborted")
    failed = m.error_response("ERROR", "22012", "division by zero")
    reply = failed + m.ready_for_query(b"E") + aborted + m.ready_for_query(b"E")
    assert stream.feed(reply) == reply
    assert b"s2" not in mine and not link.tags


def test_parse_of_a_known_rollback_in_a_failed_transaction_succeeds() -> None:
    """PostgreSQL parses COMMIT and ROLLBACK in a failed transaction: the stand-in Parse is of
    the client's own text, so it succeeds where the client's would (psycopg prepares its
    ROLLBACK after five uses, often in a failed transaction)."""
    link = LinkState(10)
    mine: dict[bytes, Statement] = {}
    stream = stream_for(link)
    Translator(link, mine).feed([parse(b"s1", b"rollback"), SYNC])
    stream.feed(PARSE_OK + m.message(b"t", b"\0\0") + m.message(b"n") + m.ready_for_query(b"I"))
    Translator(link, mine).feed([(ord("Q"), m.query("begin; select 1/0"))])
    out = Translator(link, mine).feed([parse(b"s2", b"rollback"), SYNC])
    assert out.startswith(m.message(b"P", b"pgusher_parse\0rollback\0\0\0"))
    failed = m.error_response("ERROR", "22012", "division by zero")
    stream.feed(failed + m.ready_for_query(b"E"))
    reply = PARSE_OK + m.message(b"3") + m.ready_for_query(b"E")
    assert stream.feed(reply) == PARSE_OK + m.ready_for_query(b"E")
    assert b"s2" in mine and not link.tags


def test_deallocate_all_sent_before_a_parse_leaves_the_statement_parsed() -> None:
    """DEALLOCATE ALL then a Parse, in one batch: the Parse runs after it, so its statement
    is on the server afterwards; the ones from before are parsed again (closed first)."""
    link = LinkState(10)
    mine: dict[bytes, Statement] = {}
    stream = stream_for(link)
    Translator(link, mine).feed([parse(b"s1", b"select 1"), SYNC])
    stream.feed(PARSE_OK + LEARNED + m.ready_for_query(b"I"))
    old = mine[b"s1"].key
    Translator(link, mine).feed([(ord("Q"), m.query("DEALLOCATE ALL")),
                                 parse(b"s2", b"select 2"), SYNC])
    assert link.deferred  # whether s2 is a duplicate depends on how DEALLOCATE ALL ends
    stream.feed(m.command_complete("DEALLOCATE ALL") + m.ready_for_query(b"I"))
    Translator(link, mine).feed(link.take_deferred())
    stream.feed(PARSE_OK + LEARNED + m.ready_for_query(b"I"))
    assert mine[b"s2"].key in link.statements and old in link.needs_close
    Translator(link, mine).feed([parse(b"s1", b"select 1"), SYNC])
    assert old not in link.needs_close  # closed before it is parsed again


def test_skipped_eviction_leaves_the_statement_to_close() -> None:
    """An eviction the server skipped (an error before it) did not close the statement: it
    is closed before it is parsed again, not parsed on top of itself (42P05)."""
    link = LinkState(1)
    mine: dict[bytes, Statement] = {}
    stream = stream_for(link)
    Translator(link, mine).feed([parse(b"s1", b"select 1"), SYNC])
    stream.feed(PARSE_OK + LEARNED + m.ready_for_query(b"I"))
    first = mine[b"s1"].key
    Translator(link, mine).feed([bind(b""), parse(b"s2", b"select 2"), SYNC])  # evicts s1
    error = m.error_response("ERROR", "26000", "unnamed prepared statement does not exist")
    stream.feed(error + m.ready_for_query(b"I"))
    assert first in link.needs_close and first not in link.statements
    out = Translator(link, mine).feed([bind(b"s1"), EXECUTE, SYNC])
    assert out.startswith(m.message(b"C", b"S" + first.encode() + b"\0"))


def test_deallocate_as_the_unnamed_statement_frees_the_name_when_executed() -> None:
    link = LinkState(10)
    mine: dict[bytes, Statement] = {}
    stream = stream_for(link)
    Translator(link, mine).feed([parse(b"_pg3_0", b"select 1"), SYNC])
    stream.feed(PARSE_OK + LEARNED + m.ready_for_query(b"I"))
    dealloc = (ord("P"), m.message(b"P", b"\0DEALLOCATE _pg3_0\0\0\0"))
    out = Translator(link, mine).feed([dealloc])
    assert out == m.message(b"P", b"\0DEALLOCATE pgusher_deallocate\0\0\0")
    assert b"_pg3_0" in mine  # parsed, not run yet
    out = Translator(link, mine).feed([bind(b""), describe(b"P"), EXECUTE, SYNC])
    assert b"_pg3_0" not in mine
    assert m.message(b"P", b"pgusher_deallocate\0SELECT\0\0\0") in out
    reply = (PARSE_OK + BIND_OK + m.message(b"n") + m.message(b"3") + PARSE_OK
             + m.command_complete("DEALLOCATE") + m.ready_for_query(b"I"))
    assert stream.feed(reply) == (PARSE_OK + BIND_OK + m.message(b"n")
                                  + m.command_complete("DEALLOCATE") + m.ready_for_query(b"I"))
    assert not link.tags
