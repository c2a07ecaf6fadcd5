"""Which SQL texts may change session state where the pooler cannot see it (sans-IO).

PostgreSQL 15 reports neither the role nor search_path, and a function, a DO block, CALL, an
EXECUTE of a prepared statement or a bound ``set_config`` can change either without a word on
the wire. Reading the SQL cannot tell what such code does, so the pooler does not try: a text
that may run code whose effects it cannot read is *opaque*, and the transaction it runs in is
followed by a read-back of the server's session (see :mod:`.capture`) before the server is
released. Everything else keeps the fast path.

A text is opaque when a statement starts with DO, CALL or EXECUTE, or when it calls a function
that is not a built-in known to leave the session alone: any name outside the list of
pg_catalog functions (:mod:`.builtins`, read from PostgreSQL 15), any schema-qualified name
outside pg_catalog, any quoted name, and the few built-ins that do change the session
(``set_config``, the session advisory locks, ``setseed``, functions that run a query given as
text). Words that are followed by a parenthesis without being calls (``IN (``, ``VALUES (``,
an INSERT's column list, type modifiers) are skipped. Mistakes in this direction only cost a
read-back.

Code the text does not name (triggers, functions behind views, column defaults) is not seen
here; ``session_check = always`` treats every transaction as opaque for databases that rely on
such code to change session state.

The verdict is cached by text: applications repeat the same few statements.
"""

from __future__ import annotations

import re

from .builtins import NAMES

# Built-ins that change session state, or run SQL given as text (which may).
UNSAFE_BUILTINS = frozenset((
    "set_config", "setseed",
    "pg_advisory_lock", "pg_advisory_lock_shared", "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared", "pg_advisory_unlock", "pg_advisory_unlock_shared",
    "pg_advisory_unlock_all",
    "pg_replication_origin_session_setup", "pg_replication_origin_session_reset",
    "pg_backup_start", "pg_backup_stop",
    "query_to_xml", "query_to_xmlschema", "query_to_xml_and_xmlschema", "cursor_to_xml",
    "cursor_to_xmlschema", "table_to_xml", "table_to_xmlschema", "table_to_xml_and_xmlschema",
    "schema_to_xml", "schema_to_xmlschema", "schema_to_xml_and_xmlschema", "database_to_xml",
    "database_to_xmlschema", "database_to_xml_and_xmlschema", "ts_stat",
))
SAFE_FUNCTIONS = NAMES - UNSAFE_BUILTINS

# Reserved words and keywords that cannot name a function, followed by a parenthesis in syntax.
_NOT_CALL_WORDS = """
    all and any array as asc between case cast char character check coalesce collate
    constraint dec decimal default desc distinct else end except exists extract float for
    from greatest group grouping having in intersect interval least limit national nchar not
    nullif offset on only or order overlay position primary references returning row select
    some substring table then time timestamp to trim union unique using values when where
    window with xmlattributes xmlconcat xmlelement xmlexists xmlforest xmlparse xmlpi xmlroot
    xmlserialize normalize treat
    copy explain analyze analyse vacuum cluster reindex lateral join by
"""
_NOT_CALLS = frozenset(_NOT_CALL_WORDS.split())
# Keywords that are syntax only after a closing parenthesis (``count(*) FILTER (``).
_AFTER_PAREN = frozenset(("filter", "over", "within"))
# After these words an identifier and a parenthesis are a table (or CTE) and its columns.
_TABLE_BEFORE = frozenset(("into", "table", "copy", "references", "update", "with",
                           "recursive"))
# ``character varying(n)``, ``ON CONFLICT (``: syntax after the word that comes first.
_PAIRED = {"varying": frozenset(("character", "char", "bit", "national")),
           "conflict": frozenset(("on",))}
_CODE_WORDS = frozenset(("call", "execute"))

# One token; block comments and dollar quotes are finished by hand (they nest or name their
# end). Strings are read twice when a backslash is present: with and without escapes, since
# standard_conforming_strings decides, and the stricter verdict wins.
_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<lc>--[^\n]*)
  | (?P<bc>/\*)
  | (?P<es>[eE]'(?:[^'\\]|\\.|'')*'?)
  | (?P<us>[uU]&'(?:[^']|'')*'?)
  | (?P<s>'(?:[^']|'')*'?)
  | (?P<q>(?:[uU]&)?"(?:[^"]|"")*"?)
  | (?P<dq>\$(?:[^\W\d]\w*)?\$)
  | (?P<id>[^\W\d][\w$]*)
  | (?P<num>\d[\w.]*)
  | (?P<p>.)
""", re.S | re.X)
_BACKSLASH_STRING = re.compile(r"'(?:[^'\\]|\\.|'')*'?", re.S)
_COMMENT_EDGE = re.compile(r"/\*|\*/")
# Dotted names in quotes anywhere in the text, dollar-quoted bodies included: the custom
# settings a statement may set, read back after it.
CUSTOM_NAME = re.compile(rb"'([A-Za-z_][\w$]*\.[A-Za-z_][\w$.]*)'")

# The reason given when the only code is set_config with literal names: reading back those
# settings (and the role) is enough, since nothing else can have changed.
NAMED = "set_config "

_CACHE: dict[bytes, str] = {}
_CACHE_LIMIT = 4096
_CACHE_MAX_LEN = 4096


def opaque_reason(query: bytes, low: bytes | None = None) -> str:
    """Why this Query or Parse text may change the session unseen; "" when it cannot.

    ``low`` is ``query.lower()`` when the caller has it.
    """
    if low is None:
        low = query.lower()
    if (low.find(b"(") < 0 and low.find(b"do") < 0 and low.find(b"call") < 0
            and low.find(b"exec") < 0):
        return ""
    reason = _CACHE.get(query)
    if reason is None:
        sql = low.rstrip(b"\0").decode("utf-8", "replace")
        reason = _classify(_tokens(sql, False))
        if not reason and "\\" in sql:
            reason = _classify(_tokens(sql, True))
        if len(query) <= _CACHE_MAX_LEN:
            if len(_CACHE) >= _CACHE_LIMIT:
                _CACHE.clear()
            _CACHE[query] = reason
    return reason


def _tokens(sql: str, escapes: bool) -> list[tuple[str, str]]:
    """Significant tokens as (kind, text): kinds id, q (quoted name), s (string), p, num."""
    out: list[tuple[str, str]] = []
    pos = 0
    n = len(sql)
    match = _TOKEN.match
    while pos < n:
        m = match(sql, pos)
        assert m is not None  # the last alternative takes any character
        kind = m.lastgroup or "p"
        end = m.end()
        if kind == "bc":
            depth = 1
            while depth:
                edge = _COMMENT_EDGE.search(sql, end)
                if edge is None:
                    end = n
                    break
                depth += 1 if edge.group(0) == "/*" else -1
                end = edge.end()
        elif kind == "dq":
            close = sql.find(m.group(0), end)
            end = n if close < 0 else close + len(m.group(0))
            out.append(("s", ""))
        elif kind == "s" and escapes:
            m2 = _BACKSLASH_STRING.match(sql, pos)
            assert m2 is not None
            end = m2.end()
            out.append(("s", ""))
        elif kind == "s":
            out.append(("s", m.group(0)[1:-1].replace("''", "'")))
        elif kind in ("es", "us"):
            out.append(("s", ""))
        elif kind not in ("ws", "lc"):
            out.append((kind, m.group(0)))
        pos = end
    return out


def _classify(tokens: list[tuple[str, str]]) -> str:
    count = len(tokens)
    named: list[str] = []  # set_config's literal first arguments
    for i, (kind, text) in enumerate(tokens):
        if kind == "id":
            if text in _CODE_WORDS:
                return text.upper()
            if text == "do":
                after = tokens[i + 1][1] if i + 1 < count else ""
                if after not in ("nothing", "update"):
                    return "DO"
        if not (kind == "id" or kind == "q") or i + 1 >= count or tokens[i + 1] != ("p", "("):
            continue
        before = tokens[i - 1] if i else ("p", "")
        if text == "set_config" and (before != ("p", ".") or (
                i >= 2 and tokens[i - 2] == ("id", "pg_catalog"))):
            name = tokens[i + 2] if i + 3 < count else ("p", "")
            if name[0] == "s" and name[1] and tokens[i + 3] == ("p", ","):
                named.append(name[1].lower())
                continue  # what it changes is named: read back just that
            return "function set_config"
        if before == ("p", "."):
            schema = tokens[i - 2] if i >= 2 else ("p", "")
            if schema == ("id", "pg_catalog") and text in SAFE_FUNCTIONS:
                continue
            if i >= 3 and tokens[i - 3][0] == "id" and tokens[i - 3][1] in _TABLE_BEFORE:
                continue
            return f"function {text}"
        if before[0] == "id" and before[1] in _TABLE_BEFORE:
            continue
        if before == ("id", "as") or before == ("p", ")"):
            continue  # the column list of an alias: ``AS o(n)``, ``generate_series(1, 3) g(i)``
        if kind == "q":
            return f"function {text}"
        if text in SAFE_FUNCTIONS or text in _NOT_CALLS:
            continue
        if text in _AFTER_PAREN and before == ("p", ")"):
            continue
        pair = _PAIRED.get(text)
        if pair is not None and before[0] == "id" and before[1] in pair:
            continue
        return f"function {text}"
    if named:
        return NAMED + ",".join(sorted(set(named)))
    return ""


def named_settings(reason: str) -> list[str]:
    """The settings a reason of :data:`NAMED` kind names; [] for any other reason."""
    return reason[len(NAMED):].split(",") if reason.startswith(NAMED) else []


def custom_names(query: bytes) -> list[str]:
    """The dotted setting names a text mentions in quotes (custom settings it may set)."""
    return [m.group(1).decode("ascii", "replace").lower() for m in CUSTOM_NAME.finditer(query)]
