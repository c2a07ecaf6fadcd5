"""Console command grammar (sans-IO): query text in, a command out.

The grammar is PgBouncer's: one keyword with at most one argument, or ``SET key = value``
(``=`` or ``TO``; the value a bare word or a single-quoted string), an optional trailing
semicolon, case-insensitive keywords. A word is letters, digits and underscores, or a
double-quoted identifier. Anything else is the same error PgBouncer gives.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import PgusherError

_WORD = r'("(?:[^"]|"")+"|[0-9A-Za-z_]+)'
_STRING = r"('(?:[^']|'')*')"
_END = r"\s*(?:;\s*)?\Z"

_CMD = re.compile(r"\A\s*" + _WORD + r"(?:\s+" + _WORD + r")?" + _END)
_SET = re.compile(r"\A\s*set\s+" + _WORD + r"\s*(?:=|to)\s*(?:" + _WORD + "|" + _STRING + ")"
                  + _END, re.IGNORECASE)


class ConsoleError(PgusherError):
    """An error answered on the console; the session stays open (SQLSTATE 08P01 as PgBouncer)."""

    sqlstate = "08P01"

    def __init__(self, message: str, *, sqlstate: str | None = None,
                 detail: str | None = None) -> None:
        super().__init__(message, sqlstate=sqlstate)
        self.detail = detail


@dataclass(frozen=True)
class Command:
    name: str  # lower case
    arg: str  # "" when absent; unquoted


@dataclass(frozen=True)
class SetCommand:
    key: str
    value: str


def _unquote(text: str | None, quote: str) -> str:
    if not text:
        return ""
    if text[0] == quote:
        return text[1:-1].replace(quote * 2, quote)
    return text


def parse(query: str) -> Command | SetCommand:
    """Parse one console query; ConsoleError with PgBouncer's wording when it does not fit."""
    m = _SET.match(query)
    if m is not None:
        key = _unquote(m.group(1), '"')
        if not key:
            raise ConsoleError("bad arguments")
        value = _unquote(m.group(2), '"') if m.group(2) else _unquote(m.group(3), "'")
        return SetCommand(key, value)
    m = _CMD.match(query)
    if m is None:
        raise ConsoleError(f"invalid command '{query}', use SHOW HELP;")
    return Command(_unquote(m.group(1), '"').lower(), _unquote(m.group(2), '"'))
