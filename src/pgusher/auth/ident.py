"""User name maps (auth_ident_file, pg_ident.conf): which system user may log in as whom.

Strategy: sans-IO, like ``hba.py``, whose tokenizer it shares: :func:`parse_ident` takes the
file's text and returns the maps by name; a line that cannot be understood is a ConfigError
naming ``file:line``. Each line is ``MAPNAME SYSTEM-USERNAME PG-USERNAME``; a quoted name is
literal, and an unquoted ``all`` as PG-USERNAME lets the system user log in as anyone.
PostgreSQL's regular expressions (``/...``) and ``\\1`` substitutions are refused rather than
compared as plain names. HBA rules with ``map=`` (``cert`` and ``peer``) consult a map with
:func:`map_allows`.
"""

from __future__ import annotations

from pgusher.auth.hba import IdentMapping as Mapping
from pgusher.auth.hba import logical_lines, tokenize_line
from pgusher.errors import ConfigError

__all__ = ["IdentMaps", "Mapping", "map_allows", "parse_ident"]

IdentMaps = dict[str, tuple[Mapping, ...]]


def parse_ident(text: str, filename: str = "<ident>") -> IdentMaps:
    """The maps in ``text``; ConfigError("file:line: reason") on the first bad line."""
    maps: dict[str, list[Mapping]] = {}
    for lineno, line in logical_lines(text.removeprefix("\ufeff")):
        try:
            fields = tokenize_line(line)
        except ValueError as exc:
            raise ConfigError(f"{filename}:{lineno}: {exc}") from None
        if not fields:
            continue
        if len(fields) != 3 or any(len(f) != 1 for f in fields):
            raise ConfigError(f"{filename}:{lineno}: expected MAPNAME SYSTEM-USERNAME "
                              "PG-USERNAME")
        name, system, pg_user = (f[0] for f in fields)
        if not system.quoted and system.text.startswith("/"):
            raise ConfigError(f"{filename}:{lineno}: regular expressions are not supported")
        if "\\1" in pg_user.text:
            raise ConfigError(f"{filename}:{lineno}: \\1 substitution is not supported")
        maps.setdefault(name.text, []).append(Mapping(system.text, pg_user))
    return {name: tuple(entries) for name, entries in maps.items()}


def map_allows(mappings: tuple[Mapping, ...], system_user: str | None, user: str) -> bool:
    """Whether the map lets ``system_user`` (a certificate's name, a socket peer's login
    name) log in as database user ``user``."""
    if system_user is None:
        return False
    for mapping in mappings:
        if mapping.system_user != system_user:
            continue
        if mapping.pg_user.keyword("all") or mapping.pg_user.text == user:
            return True
    return False
