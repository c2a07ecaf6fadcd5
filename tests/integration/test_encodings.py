"""A client's encoding, however it spells it, is reported by PostgreSQL's own name: in the
pooler's welcome as on a direct connection, in every pool mode."""

from __future__ import annotations

import psycopg
import pytest
from poolcase import start

from support import PgCluster, PoolerFactory

SPELLINGS = ["UTF-8", "utf8", "Unicode", "EUC-JP", "euc_jp", "ISO-8859-1", "latin-1",
             "Windows-1252", "win1252", "Shift_JIS", "koi8-r", "LATIN9", "iso_8859_5"]


def reported(dsn: str, spelling: str) -> tuple[str | None, object]:
    with psycopg.connect(dsn, client_encoding=spelling, autocommit=True) as conn:
        status = conn.pgconn.parameter_status(b"client_encoding")
        row = conn.execute("show client_encoding").fetchone()
        return (status.decode() if status else None), (row[0] if row else None)


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_client_encoding_is_reported_by_its_canonical_name(
        pg: PgCluster, pooler: PoolerFactory, mode: str) -> None:
    proc = start(pooler, mode, pool_size=2)
    for spelling in SPELLINGS:
        want = reported(pg.dsn("postgres"), spelling)
        assert reported(proc.dsn("postgres"), spelling) == want, spelling
