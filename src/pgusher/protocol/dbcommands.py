"""Commands that need a database to themselves, and the error they meet on a pooler (sans-IO).

``DROP DATABASE``, ``ALTER DATABASE`` (RENAME, SET TABLESPACE) and ``CREATE DATABASE ...
TEMPLATE`` wait up to five seconds and then fail with SQLSTATE 55006 ("being accessed by other
users") while any other session is connected to the database they name. Through a pooler,
those sessions are often only the pooler's own idle server connections, which a direct
connection would not have. So when a client sends such a command as a simple query,
:func:`database_named` names the database and the pooler closes its idle connections to it
before passing the command on; PostgreSQL's check waits the moment their backends take to
exit. A session really connected to the database still makes the command fail, as it should.
"""

from __future__ import annotations

import re

# Cheap pre-filter on the raw message: only texts that mention the word go further.
_MENTION = re.compile(rb"database", re.I)
_IDENT = r'("(?:[^"]|"")+"|[A-Za-z_][\w$]*)'
_DROP = re.compile(r"\s*drop\s+database\s+(?:if\s+exists\s+)?" + _IDENT, re.I)
_ALTER = re.compile(r"\s*alter\s+database\s+" + _IDENT, re.I)
_CREATE = re.compile(r"\s*create\s+database\s.*?\btemplate\s*=?\s*" + _IDENT, re.I | re.S)
_SHORT = 2048  # longer texts are not such commands


def _name(token: str) -> str:
    if token.startswith('"'):
        return token[1:-1].replace('""', '"')
    return token.lower()


def database_named(message: bytes) -> str | None:
    """For one whole simple Query message: the database the command needs to itself, if it
    is one of those commands; else None."""
    if (len(message) > _SHORT or not message or message[0] != 81
            or not _MENTION.search(message, 5)):
        return None
    text = message[5:].rstrip(b"\0").decode("utf-8", "replace")
    for pattern in (_DROP, _ALTER, _CREATE):
        found = pattern.match(text)
        if found is not None:
            return _name(found.group(1))
    return None
