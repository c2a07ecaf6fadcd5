"""What a client's SQL does to its session, read from the query text (sans-IO).

PostgreSQL 15 reports only a few settings with ParameterStatus; search_path, the role and every
other SET are invisible on the wire. In transaction mode a client's next transaction may run on
another server connection, so the pooler reads the client's own statements to learn:

* settings it can carry from server to server: ``SET [SESSION] name = value``, ``RESET name``,
  ``RESET ALL``, ``SET ROLE``, ``SET SESSION AUTHORIZATION`` (replayed with SET/RESET when the
  client moves);
* texts whose effects cannot be read (``set_config``, DO, CALL, EXECUTE, functions; see
  :mod:`.opaque`): the server's session is read back after their transaction;
* state it cannot carry (temporary objects, session advisory locks, WITH HOLD cursors,
  SQL-level PREPARE, LOAD, ``SET ... FROM CURRENT``): the server connection must be reset
  before anyone else uses it;
* ``LISTEN channel``, ``UNLISTEN channel`` and ``UNLISTEN *``: the pooler's own listening
  connection takes them over once they commit (net/listener.py);
* DISCARD ALL, and transaction ends by ROLLBACK (a SET inside a rolled-back transaction is undone).

A cheap keyword pre-filter keeps ordinary queries off the slow path. Anything inside quotes,
dollar quotes or comments is ignored.
"""

from __future__ import annotations

import re

from .capture import RAW
from .opaque import custom_names, named_settings, opaque_reason

# Effects, as (kind, name, value) tuples.
SET = "set"            # name, SQL value text
RESET = "reset"        # name
RESET_ALL = "reset_all"
DIRTY = "dirty"        # name = reason
ROLLBACK = "rollback"
DISCARD_ALL = "discard_all"  # RESET ALL plus the role and session authorization
OPAQUE = "opaque"      # name = reason, value = custom setting names the text mentions
LISTEN = "listen"      # name = channel
UNLISTEN = "unlisten"  # name = channel, or "*" for all

# Matched against the lower-cased text: a leading character class lets the regex engine skip
# quickly, several times faster than an IGNORECASE alternation. It finds set, reset, discard,
# deallocate, temp, advisory, (un)listen, hold, prepare, load, rollback, abort and execute.
_PREFILTER = re.compile(rb"[sdtalhpre](?:et|isc|emp|dvi|iste|old|rep|oad|oll|bor|eal|xec)")
# Second stage, only after a first-stage hit: the keywords must start a statement (so the SET
# of an UPDATE does not count), or be a function name that can appear anywhere.
_PRECISE = re.compile(
    rb"(?:^|;)\s*(?:(?:/\*.*?\*/|--[^\n]*\n)\s*)*"
    rb"(?:set|reset|discard|deallocate|listen|unlisten|prepare|load|rollback|abort|declare|"
    rb"create|"
    rb"execute)\b|set_config|advisory_lock|temp", re.S)


# What the second stage needs to see at the start of a text (after whitespace) to match there:
# one of its keywords, or a comment that could come before one.
_FIRST_WORDS = (b"set", b"reset", b"discard", b"deallocate", b"listen", b"unlisten", b"prepare",
                b"load", b"rollback", b"abort", b"declare", b"create", b"execute", b"/", b"-")
_TRAILING = b"; \t\n\r\f\v\0"  # after a last semicolon, nothing can start a statement


def might_affect_session(query: bytes) -> bool:
    """Cheap test run on every query: False means :func:`inspect` would find nothing."""
    low = query.lower()
    # The usual query, settled inline: nothing _keywords_hit or opaque_reason would look at.
    if (low.find(b"(") < 0 and low.find(b"do") < 0 and low.find(b"call") < 0
            and low.find(b"exec") < 0 and low.find(b"temp") < 0
            and not low.lstrip().startswith(_FIRST_WORDS)
            and low.rstrip(_TRAILING).find(b";") < 0):
        return False
    return _keywords_hit(low) or bool(opaque_reason(query, low))


def _keywords_hit(low: bytes) -> bool:
    # Most queries are settled before either regex: the second stage cannot match a text
    # with none of its three words that count anywhere, no keyword or comment first and no
    # semicolon but trailing ones. find(), because ``in`` on bytes first tries the needle
    # as an integer, which costs more than the search.
    if (low.find(b"temp") < 0 and low.find(b"set_config") < 0
            and low.find(b"advisory_lock") < 0 and not low.lstrip().startswith(_FIRST_WORDS)
            and low.rstrip(_TRAILING).find(b";") < 0):
        return False
    return _PREFILTER.search(low) is not None and _PRECISE.search(low) is not None

_STATEMENT_START = re.compile(r"\s*(\w+)", re.A)
_SET = re.compile(
    r"set\s+(?:(session|local)\s+)?"
    r"(?:(role)\s+(.+)|(session\s+authorization)\s+(.+)|(time\s+zone)\s+(.+)|"
    r"((?:\"[^\"]+\"|[a-z_][\w$]*)(?:\.(?:\"[^\"]+\"|[a-z_][\w$]*))?)"
    r"\s*(?:=|\bto\b)\s*(.+)|"
    r"([\w.\"$]+)\s+from\s+current)\s*$", re.I | re.S | re.A)
_RESET = re.compile(
    r"reset\s+(?:(all)|(role)|(session\s+authorization)|(time\s+zone)|"
    r"((?:\"[^\"]+\"|[a-z_][\w$]*)(?:\.(?:\"[^\"]+\"|[a-z_][\w$]*))?))\s*$", re.I | re.S | re.A)
_TEMP = re.compile(r"create\s+(?:(?:global|local)\s+)?(?:temp|temporary)\s", re.I)
_TEMP_INTO = re.compile(r"\binto\s+(?:temp|temporary)\s", re.I)
_ADVISORY = re.compile(r"pg_(?:try_)?advisory_lock(?:_shared)?\s*\(", re.I)
_HOLD = re.compile(r"declare\b.*\bwith\s+hold\b", re.I | re.S)
_DISCARD_ALL = re.compile(r"discard\s+all\s*$", re.I)
_PLAIN_NAME = re.compile(r"[a-z_][a-z0-9_$]*(?:\.[a-z_][a-z0-9_$]*)?")


def split_statements(sql: str) -> list[str]:
    """Split on semicolons outside quotes, dollar quotes and comments; strip comments."""
    out: list[str] = []
    buf: list[str] = []
    i = 0
    n = len(sql)
    while i < n:
        ch = sql[i]
        if ch == "'" or ch == '"':
            j = i + 1
            while j < n:
                if sql[j] == ch:
                    if j + 1 < n and sql[j + 1] == ch:
                        j += 2
                        continue
                    break
                j += 1
            buf.append(sql[i:j + 1])
            i = j + 1
        elif ch == "$":
            m = re.match(r"\$([a-zA-Z_]\w*)?\$", sql[i:])
            if m is None:
                buf.append(ch)
                i += 1
                continue
            tag = m.group(0)
            end = sql.find(tag, i + len(tag))
            end = n if end < 0 else end + len(tag)
            buf.append(" $$ ")  # body hidden: its statements are not the session's
            i = end
        elif ch == "-" and sql.startswith("--", i):
            nl = sql.find("\n", i)
            i = n if nl < 0 else nl + 1
            buf.append(" ")
        elif ch == "/" and sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            i = n if end < 0 else end + 2
            buf.append(" ")
        elif ch == ";":
            out.append("".join(buf))
            buf = []
            i += 1
        else:
            buf.append(ch)
            i += 1
    out.append("".join(buf))
    return [s.strip() for s in out if s.strip()]


def _strip_literals(stmt: str) -> str:
    return re.sub(r"'(?:[^']|'')*'", "''", stmt)


def inspect(query: bytes) -> list[tuple[str, str, str]]:
    """Effects of one Query or Parse text on the session, in order."""
    if not might_affect_session(query):
        return []
    return inspect_text(query)


def inspect_text(query: bytes) -> list[tuple[str, str, str]]:
    """:func:`inspect` without the pre-filter (the caller has run it)."""
    sql = query.rstrip(b"\0").decode("utf-8", "replace")
    effects: list[tuple[str, str, str]] = []
    for stmt in split_statements(sql):
        first = _STATEMENT_START.match(stmt)
        word = first.group(1).lower() if first else ""
        bare = _strip_literals(stmt)
        if word == "set":
            _set_effect(stmt, effects)
        elif word == "reset":
            _reset_effect(stmt, effects)
        elif word in ("rollback", "abort"):
            effects.append((ROLLBACK, "", ""))
        elif word == "discard" and _DISCARD_ALL.match(stmt):
            effects.append((DISCARD_ALL, "", ""))
        elif word == "listen" or word == "unlisten":
            _listen_effect(word, stmt, effects)
        elif word == "prepare" and not re.match(r"prepare\s+transaction\b", stmt, re.I):
            effects.append((DIRTY, "SQL-level PREPARE", ""))
        elif word == "load":
            effects.append((DIRTY, "LOAD", ""))
        if _TEMP.search(bare) or _TEMP_INTO.search(bare):
            effects.append((DIRTY, "temporary object", ""))
        if _ADVISORY.search(bare):
            effects.append((DIRTY, "session advisory lock", ""))
        if word == "declare" and _HOLD.search(bare):
            effects.append((DIRTY, "WITH HOLD cursor", ""))
    reason = opaque_reason(query)
    if reason:
        # set_config, DO, CALL, EXECUTE, functions: read back after the transaction.
        names = sorted({*custom_names(query), *named_settings(reason)})
        effects.append((OPAQUE, reason, ",".join(names)))
    return effects


_CHANNEL = re.compile(r'(?:listen|unlisten)\s+(?:("(?:[^"]|"")+")|([a-z_][\w$]*)|(\*))\s*$',
                      re.I | re.S | re.A)


def _listen_effect(word: str, stmt: str, effects: list[tuple[str, str, str]]) -> None:
    """LISTEN or UNLISTEN of one channel (unquoted names fold to lower case), or UNLISTEN *.
    Text that is neither is left to the server, which refuses it."""
    m = _CHANNEL.match(stmt)
    if m is None or (m.group(3) and word == "listen"):
        return
    quoted, plain, every = m.groups()
    channel = "*" if every else plain.lower() if plain else quoted[1:-1].replace('""', '"')
    # PostgreSQL cuts a name to 63 bytes (NAMEDATALEN - 1), on a character boundary.
    channel = channel.encode()[:63].decode("utf-8", "ignore")
    effects.append((LISTEN if word == "listen" else UNLISTEN, channel, ""))


def _canon(name: str) -> str:
    """Unquoted names fold to lower case; quoted ones keep their text (quotes included)."""
    name = name.strip()
    return name if '"' in name else name.lower()


def _set_effect(stmt: str, effects: list[tuple[str, str, str]]) -> None:
    m = _SET.match(stmt)
    if m is None:
        if re.match(r"set\s+(?:local\s+)?(?:transaction|constraints)\b", stmt, re.I):
            return  # transaction-scoped
        # SET SCHEMA, SET SESSION CHARACTERISTICS, SET NAMES...: read back afterwards.
        effects.append((OPAQUE, "SET", ""))
        return
    if (m.group(1) or "").lower() == "local":
        return
    if m.group(2):
        effects.append((SET, "role", m.group(3).strip()))
    elif m.group(4):
        effects.append((SET, "session_authorization", m.group(5).strip()))
    elif m.group(6):
        effects.append((SET, "timezone", m.group(7).strip()))
    elif m.group(8):
        effects.append((SET, _canon(m.group(8)), m.group(9).strip()))
    else:
        effects.append((OPAQUE, "SET ... FROM CURRENT", ""))


def _reset_effect(stmt: str, effects: list[tuple[str, str, str]]) -> None:
    m = _RESET.match(stmt)
    if m is None:
        effects.append((OPAQUE, "RESET", ""))
    elif m.group(1):
        effects.append((RESET_ALL, "", ""))
    elif m.group(2):
        effects.append((RESET, "role", ""))
    elif m.group(3):
        effects.append((RESET, "session_authorization", ""))
    elif m.group(4):
        effects.append((RESET, "timezone", ""))
    else:
        effects.append((RESET, _canon(m.group(5)), ""))


def replay_sql(name: str, value: str | None) -> str:
    """The statement that gives a server ``name = value`` (or its default when None)."""
    if value is not None and value.startswith(RAW):
        # The server's own text form, read back (protocol/capture.py): set_config reads it.
        return (f"SELECT pg_catalog.set_config({_literal(name.strip(chr(34)))}, "
                f"{_literal(value[1:])}, false)")
    if name == "role":
        return f"SET ROLE {value}" if value is not None else "RESET ROLE"
    if name == "session_authorization":
        return (f"SET SESSION AUTHORIZATION {value}" if value is not None
                else "RESET SESSION AUTHORIZATION")
    ident = name if ('"' in name or _PLAIN_NAME.fullmatch(name)) \
        else '"' + name.replace('"', '""') + '"'
    return f"SET {ident} = {value}" if value is not None else f"RESET {ident}"


def _literal(value: str) -> str:
    return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def order_key(name: str) -> int:
    """Session authorization must come before role, and both before the rest."""
    return {"session_authorization": 0, "role": 1}.get(name, 2)


def parse_options(value: str) -> list[tuple[str, str]]:
    """The ``options`` startup parameter: ``-c name=value`` and ``--name=value`` items.

    Words are separated by spaces; a backslash makes the next character literal.
    """
    words: list[str] = []
    buf: list[str] = []
    escaped = False
    for ch in value:
        if escaped:
            buf.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch.isspace():
            if buf:
                words.append("".join(buf))
                buf = []
        else:
            buf.append(ch)
    if buf:
        words.append("".join(buf))
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(words):
        word = words[i]
        item = ""
        if word == "-c" and i + 1 < len(words):
            item = words[i + 1]
            i += 1
        elif word.startswith("-c") or word.startswith("--"):
            item = word[2:]
        i += 1
        if "=" in item:
            name, _, setting = item.partition("=")
            out.append((name.replace("-", "_").lower(), setting))
    return out


# SQL-level prepared statements, handled when a query is exactly one such statement.
_NAME = r'("(?:[^"]|"")+"|[a-z_][\w$]*)'
_SQL_PREPARE = re.compile(r"prepare\s+" + _NAME + r"\s*(\([^()]*\))?\s+as\s+(.+)$", re.I | re.S)
_SQL_EXECUTE = re.compile(r"execute\s+" + _NAME + r"\s*(\(.*\))?\s*$", re.I | re.S)
# EXECUTE inside EXPLAIN and CREATE TABLE AS: what comes before it, and after its arguments.
_EXPLAIN_HEAD = re.compile(r"explain\s+(?:\([^()]*\)\s*|(?:analy[sz]e|verbose)\s+)*", re.I | re.S)
_CTAS_HEAD = re.compile(
    r"create\s+(?:(?:global|local)\s+)?(?:(?:temp|temporary|unlogged)\s+)?table\s+"
    r"(?:if\s+not\s+exists\s+)?(?:\"(?:[^\"]|\"\")+\"|[\w$]+)(?:\.(?:\"(?:[^\"]|\"\")+\"|[\w$]+))?"
    r"\s*(?:\([^()]*\)\s*)?as\s+", re.I | re.S)
_CTAS_TAIL = re.compile(r"(\(.*\))?(\s+with\s+(?:no\s+)?data)?\s*$", re.I | re.S)
_SQL_DEALLOCATE = re.compile(r"deallocate\s+(?:prepare\s+)?" + _NAME + r"\s*$", re.I | re.S)


SqlVerb = tuple[str, str, str, str]


def sql_prepared(query: bytes) -> SqlVerb | None:
    """A query that is one PREPARE, EXECUTE or DEALLOCATE of a named statement, or one
    EXPLAIN or CREATE TABLE AS of an EXECUTE.

    Returns (verb, name, rest, head): for PREPARE rest is ``[(types)] AS body``, for EXECUTE
    the parameter list (may be empty) and what follows it (CREATE TABLE AS's WITH [NO] DATA),
    for DEALLOCATE empty. ``head`` is the text before EXECUTE (EXPLAIN ..., CREATE TABLE ...
    AS), else empty. ``DEALLOCATE ALL`` is not matched.
    """
    statements = split_statements(query.rstrip(b"\0").decode("utf-8", "replace"))
    if len(statements) != 1:
        return None
    stmt = statements[0]
    head = _EXPLAIN_HEAD.match(stmt) or _CTAS_HEAD.match(stmt)
    if head is not None:
        m = re.compile(r"execute\s+" + _NAME + r"\s*", re.I).match(stmt, head.end())
        tail = _CTAS_TAIL.match(stmt, m.end()) if m is not None else None
        if m is None or tail is None or (tail.group(2) and head.re is _EXPLAIN_HEAD):
            return None
        return "execute", _canon(m.group(1)), stmt[m.end():].rstrip(), head.group(0)
    for verb, pattern in (("prepare", _SQL_PREPARE), ("execute", _SQL_EXECUTE),
                          ("deallocate", _SQL_DEALLOCATE)):
        m = pattern.match(stmt)
        if m is None:
            continue
        name = _canon(m.group(1))
        if verb == "deallocate" and name == "all":
            return None
        if verb == "prepare":
            rest = (m.group(2) or "") + " AS " + m.group(3)
        elif verb == "execute":
            rest = m.group(2) or ""
        else:
            rest = ""
        return verb, name, rest, ""
    return None
