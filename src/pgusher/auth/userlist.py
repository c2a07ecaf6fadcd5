"""Reading the auth_file (PgBouncer's userlist.txt format).

Strategy: a small hand-written scanner, one line at a time. Each useful line holds two
double-quoted fields, ``"username" "secret"``, separated by whitespace; inside a field a
doubled ``""`` stands for one ``"``. Anything after the second field is ignored, as are blank
lines and lines whose first non-blank character is ``;`` or ``#``. A line that cannot be read
is skipped and reported as a ``file:line: reason`` warning rather than failing the whole file,
so one typo does not lock every user out. When a user appears twice the last entry wins (with
a warning). Secrets are returned verbatim: plain text, ``md5...`` or ``SCRAM-SHA-256$...``.

The file is decoded as UTF-8 with ``surrogateescape`` so that secrets in another encoding keep
their bytes all the way to the hash functions.
"""

from __future__ import annotations

from pgusher.errors import ConfigError

_BLANKS = " \t\v\f\r"


class _LineError(Exception):
    pass


def _read_quoted(line: str, pos: int, what: str) -> tuple[str, int]:
    """Read a ``"..."`` field starting at ``pos``; return (value, position after it)."""
    if pos >= len(line) or line[pos] != '"':
        raise _LineError(f"expected a double-quoted {what}")
    pos += 1
    chunks: list[str] = []
    while True:
        end = line.find('"', pos)
        if end < 0:
            raise _LineError(f"unterminated quoted {what}")
        chunks.append(line[pos:end])
        if line.startswith('"', end + 1):
            chunks.append('"')
            pos = end + 2
            continue
        return "".join(chunks), end + 1


def _skip_blanks(line: str, pos: int) -> int:
    while pos < len(line) and line[pos] in _BLANKS:
        pos += 1
    return pos


def _parse_line(line: str) -> tuple[str, str] | None:
    """(user, secret) for a data line, None for a blank or comment line."""
    pos = _skip_blanks(line, 0)
    if pos >= len(line) or line[pos] in ";#":
        return None
    user, pos = _read_quoted(line, pos, "user name")
    after_user = pos
    pos = _skip_blanks(line, pos)
    if pos >= len(line):
        raise _LineError("missing secret after the user name")
    if pos == after_user:
        raise _LineError("expected whitespace after the user name")
    secret, _ = _read_quoted(line, pos, "secret")
    if not user:
        raise _LineError("empty user name")
    if "\x00" in user or "\x00" in secret:
        raise _LineError("NUL character in an entry")
    return user, secret


def parse_userlist(text: str, filename: str = "<userlist>") -> tuple[dict[str, str], list[str]]:
    """Parse auth_file contents into ({user: secret}, warnings)."""
    if text.startswith("\ufeff"):
        text = text[1:]
    users: dict[str, str] = {}
    warnings: list[str] = []
    for lineno, raw in enumerate(text.split("\n"), start=1):
        line = raw.removesuffix("\r")
        try:
            entry = _parse_line(line)
        except _LineError as exc:
            warnings.append(f"{filename}:{lineno}: {exc}; line skipped")
            continue
        if entry is None:
            continue
        user, secret = entry
        if user in users:
            warnings.append(f"{filename}:{lineno}: duplicate user {user!r}; the last entry wins")
        users[user] = secret
    return users, warnings


def load_userlist(path: str) -> tuple[dict[str, str], list[str]]:
    """Read and parse the auth_file at ``path``; raises ConfigError if it cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as handle:
            text = handle.read()
    except OSError as exc:
        raise ConfigError(f"could not read auth_file {path}: {exc.strerror or exc}") from exc
    return parse_userlist(text, path)
