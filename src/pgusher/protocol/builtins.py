"""The names of the functions in pg_catalog, as the frozenset NAMES.

The names are data, kept in builtins.txt beside this module (one a line, under '#' lines that
say which PostgreSQL they were read from) and read once, at import time. The file is written by
scripts/gen_builtins.py from a running server; protocol/opaque.py subtracts the few built-ins
that change session state.
"""

from __future__ import annotations

from importlib.resources import files


def _read() -> frozenset[str]:
    text = files("pgusher.protocol").joinpath("builtins.txt").read_text(encoding="utf-8")
    return frozenset(line for line in text.splitlines() if line and not line.startswith("#"))


NAMES = _read()
