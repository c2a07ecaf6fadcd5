"""Lexer for PgBouncer-style ini files.

Strategy: :func:`lex` turns the text of one file into a flat list of typed lines (section
headers, ``key = value`` entries, ``%include`` directives) and never touches the disk.
:func:`read_ini` is the only place doing I/O, and even that goes through a replaceable
``reader`` callable: it lexes the main file, splices included files in where their directive
stands (recursively, with a depth limit and loop detection) and attributes every entry to
the section it appears in - an included file continues the section of its includer, as if
its text were pasted in.  Every item remembers its file and line for error messages.

Rules: a line whose first non-blank character is ``;`` or ``#`` is a comment (there are no
inline comments: ``#`` later in a line is data); blank lines are ignored; keys and values
are stripped; a key may be double-quoted (``"my db" = ...``, ``""`` for a quote).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from pgusher.errors import ConfigError

__all__ = [
    "MAX_INCLUDE_DEPTH",
    "IniEntry",
    "IniInclude",
    "IniKeyValue",
    "IniLine",
    "IniSection",
    "lex",
    "read_ini",
    "read_text_file",
]

MAX_INCLUDE_DEPTH = 10


@dataclass(frozen=True, slots=True)
class IniSection:
    """A ``[name]`` header; ``name`` is stripped and lower-cased."""

    name: str
    file: str
    line: int

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True, slots=True)
class IniKeyValue:
    """A ``key = value`` line as lexed, before section attribution."""

    key: str
    value: str
    file: str
    line: int


@dataclass(frozen=True, slots=True)
class IniInclude:
    """A ``%include path`` directive (path as written)."""

    path: str
    file: str
    line: int


@dataclass(frozen=True, slots=True)
class IniEntry:
    """A ``key = value`` line attributed to its section (``None`` = before any section)."""

    section: str | None
    key: str
    value: str
    file: str
    line: int

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


IniLine = IniSection | IniEntry


def _parse_quoted_key(body: str, where: str) -> tuple[str, str]:
    """Split ``"quoted key" = rest`` into the unquoted key and the text after the quote."""
    out: list[str] = []
    i = 1
    while i < len(body):
        ch = body[i]
        if ch == '"':
            if i + 1 < len(body) and body[i + 1] == '"':
                out.append('"')
                i += 2
                continue
            return "".join(out), body[i + 1:]
        out.append(ch)
        i += 1
    raise ConfigError(f"{where}: syntax error: unterminated quoted name")


def lex(text: str, file: str) -> list[IniSection | IniKeyValue | IniInclude]:
    """Lex the text of one ini file.  Raises ConfigError (``file:line: ...``) on bad syntax."""
    items: list[IniSection | IniKeyValue | IniInclude] = []
    if text.startswith("\ufeff"):
        text = text[1:]
    for lineno, raw_line in enumerate(text.split("\n"), start=1):
        line = raw_line.strip()
        if not line or line[0] in ";#":
            continue
        where = f"{file}:{lineno}"
        if line[0] == "[":
            end = line.find("]")
            if end < 0:
                raise ConfigError(f"{where}: syntax error: missing ']' in section header")
            rest = line[end + 1:].strip()
            if rest and rest[0] not in ";#":
                raise ConfigError(f"{where}: syntax error: unexpected text after section "
                                  f"header: '{rest}'")
            name = line[1:end].strip().lower()
            if not name:
                raise ConfigError(f"{where}: syntax error: empty section name")
            items.append(IniSection(name, file, lineno))
            continue
        if line[0] == "%":
            parts = line[1:].split(None, 1)
            directive = parts[0] if parts else ""
            arg = parts[1] if len(parts) > 1 else ""
            if directive.lower() != "include":
                raise ConfigError(f"{where}: syntax error: unknown directive '%{directive}'")
            path = arg.strip()
            if len(path) >= 2 and path[0] == path[-1] and path[0] in "\"'":
                path = path[1:-1]
            if not path:
                raise ConfigError(f"{where}: syntax error: %include needs a file name")
            items.append(IniInclude(path, file, lineno))
            continue
        if line[0] == '"':
            key, rest = _parse_quoted_key(line, where)
            rest = rest.lstrip()
            if not rest.startswith("="):
                raise ConfigError(f"{where}: syntax error: expected '=' after \"{key}\"")
            value = rest[1:]
        else:
            key, eq, value = line.partition("=")
            key = key.strip()
            if not eq:
                raise ConfigError(f"{where}: syntax error: expected 'key = value', "
                                  f"a [section], a comment or %include, got '{line}'")
            if not key:
                raise ConfigError(f"{where}: syntax error: missing key before '='")
            if any(ch.isspace() for ch in key):
                raise ConfigError(f"{where}: syntax error: key '{key}' contains whitespace "
                                  "(quote it with double quotes)")
        items.append(IniKeyValue(key, value.strip(), file, lineno))
    return items


def read_text_file(path: str) -> str:
    """Read a UTF-8 text file, turning every failure into a ConfigError."""
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"could not read configuration file '{path}': "
                          f"{exc.strerror or exc}") from None


def _resolve_include(target: str, including_file: str,
                     exists: Callable[[str], bool]) -> str:
    """Relative include paths are taken from the including file's directory.

    For compatibility with setups that relied on the working directory, a relative path
    that does not exist there but does exist relative to the working directory is used.
    """
    target = os.path.expanduser(target)
    if os.path.isabs(target):
        return os.path.normpath(target)
    beside = os.path.normpath(os.path.join(os.path.dirname(including_file), target))
    if not exists(beside):
        from_cwd = os.path.abspath(target)
        if exists(from_cwd):
            return from_cwd
    return beside


def read_ini(path: str, reader: Callable[[str], str] = read_text_file,
             exists: Callable[[str], bool] = os.path.exists) -> list[IniLine]:
    """Read ``path`` and its includes into section headers and section-attributed entries.

    ``reader`` returns a file's text (or raises ConfigError); ``exists`` is only used to
    resolve relative includes.  Includes nest at most :data:`MAX_INCLUDE_DEPTH` deep, and a
    file including itself (directly or through others) is an error.
    """
    out: list[IniLine] = []
    section: str | None = None
    # Identity of the files being read, outermost first, for loop detection.
    stack: list[str] = []

    def walk(file: str, depth: int) -> None:
        nonlocal section
        stack.append(os.path.realpath(file))
        for item in lex(reader(file), file):
            if isinstance(item, IniSection):
                section = item.name
                out.append(item)
            elif isinstance(item, IniKeyValue):
                out.append(IniEntry(section, item.key, item.value, item.file, item.line))
            else:
                where = f"{item.file}:{item.line}"
                target = _resolve_include(item.path, file, exists)
                if os.path.realpath(target) in stack:
                    raise ConfigError(f"{where}: include loop: '{target}' is already being read")
                if depth + 1 > MAX_INCLUDE_DEPTH:
                    raise ConfigError(f"{where}: includes nested too deeply "
                                      f"(limit {MAX_INCLUDE_DEPTH}) at '{target}'")
                walk(target, depth + 1)
        stack.pop()

    walk(os.path.abspath(path), 0)
    return out
