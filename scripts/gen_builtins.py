"""Regenerate src/pgusher/protocol/builtins.txt from a running PostgreSQL.

usage: python scripts/gen_builtins.py "host=... port=... user=postgres dbname=postgres"

The file names every function in pg_catalog, one a line, under '#' lines that say what it is
and which PostgreSQL it was read from; protocol/builtins.py loads it, and protocol/opaque.py
subtracts the few that change session state. Newer servers' extra built-ins are simply absent:
a query calling one is treated as possibly changing state, which costs a check, never safety.
"""

from __future__ import annotations

import sys
from pathlib import Path

import psycopg

OUT = Path(__file__).resolve().parent.parent / "src" / "pgusher" / "protocol" / "builtins.txt"


def main() -> None:
    with psycopg.connect(sys.argv[1]) as conn:
        version = conn.execute("show server_version").fetchone()
        rows = conn.execute(
            "select distinct proname::text from pg_catalog.pg_proc "
            "where pronamespace = 'pg_catalog'::regnamespace order by 1").fetchall()
    OUT.write_text(
        "# Names of the functions in pg_catalog, one a line, written by scripts/gen_builtins.py.\n"
        f"# Read from PostgreSQL {version[0] if version else '?'}.\n"
        + "".join(f"{name}\n" for (name,) in rows))


if __name__ == "__main__":
    main()
