"""libpq-style connection strings: ``key=value key = 'quoted value'``.

Strategy: a single left-to-right scanner over the string, no regular expressions, so that
every error can say exactly what was wrong.  Pairs are separated by whitespace; blanks are
allowed around ``=``; a value is either bare (up to the next whitespace) or single-quoted.
Inside a value ``\\'`` and ``\\\\`` stand for a quote and a backslash (libpq's escapes) and,
inside quotes, ``''`` also stands for a quote (the SQL-style doubling PgBouncer's own files
use); any other backslash is kept as it is, so Windows paths and regexps survive.  Keys are
lower-cased.  The result keeps the order of the pairs; what a later duplicate means is left to
the caller (usually: last one wins).
"""

from __future__ import annotations

__all__ = ["ConnStrError", "format_connstr", "parse_connstr", "quote_value"]


_ESCAPABLE = "'\\"


class ConnStrError(ValueError):
    """The connection string is malformed; the message says where and why."""


def _is_key_char(ch: str) -> bool:
    return ch.isascii() and (ch.isalnum() or ch == "_")


def parse_connstr(text: str) -> list[tuple[str, str]]:
    """Split a connection string into ``(key, value)`` pairs, keys lower-cased."""
    pairs: list[tuple[str, str]] = []
    n = len(text)
    i = 0
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            return pairs
        start = i
        while i < n and not text[i].isspace() and text[i] != "=":
            i += 1
        key = text[start:i]
        if not key:
            raise ConnStrError(f"missing parameter name before '=' at position {start + 1}")
        if not all(_is_key_char(ch) for ch in key):
            raise ConnStrError(f"invalid parameter name '{key}'")
        while i < n and text[i].isspace():
            i += 1
        if i >= n or text[i] != "=":
            raise ConnStrError(f"missing '=' after parameter '{key}'")
        i += 1
        while i < n and text[i].isspace():
            i += 1
        buf: list[str] = []
        if i < n and text[i] == "'":
            i += 1
            closed = False
            while i < n:
                ch = text[i]
                if ch == "\\" and i + 1 < n and text[i + 1] in _ESCAPABLE:
                    buf.append(text[i + 1])
                    i += 2
                elif ch == "'" and i + 1 < n and text[i + 1] == "'":
                    buf.append("'")
                    i += 2
                elif ch == "'":
                    closed = True
                    i += 1
                    break
                else:
                    buf.append(ch)
                    i += 1
            if not closed:
                raise ConnStrError(f"unterminated quoted value for parameter '{key}'")
            if i < n and not text[i].isspace():
                raise ConnStrError(f"unexpected '{text[i]}' after quoted value of "
                                   f"parameter '{key}'")
        else:
            while i < n and not text[i].isspace():
                ch = text[i]
                if ch == "\\" and i + 1 < n and text[i + 1] in _ESCAPABLE:
                    buf.append(text[i + 1])
                    i += 2
                else:
                    buf.append(ch)
                    i += 1
        pairs.append((key.lower(), "".join(buf)))


def quote_value(value: str) -> str:
    """Quote a value if it needs it, so that :func:`parse_connstr` gives it back."""
    if value and not any(ch.isspace() or ch in "'\\" for ch in value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def format_connstr(pairs: list[tuple[str, str]] | dict[str, str]) -> str:
    """The inverse of :func:`parse_connstr`."""
    items = pairs.items() if isinstance(pairs, dict) else pairs
    return " ".join(f"{k}={quote_value(v)}" for k, v in items)
