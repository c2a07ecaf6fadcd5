"""A server login that fails: the server's error goes to the waiting clients at once, the
server's closing line names it, and for server_login_retry new clients are told the cached
error in PgBouncer's words."""

from __future__ import annotations

import re

import psycopg
import pytest
from poolcase import USERLIST

from support import PgCluster, PoolerFactory


def test_failed_server_login_is_cached(pg: PgCluster, pooler: PoolerFactory) -> None:
    db = f"host=127.0.0.1 port={pg.port} dbname=app user=md5_user password=wrong-one"
    proc = pooler({"databases": {"app": db},
                   "pgbouncer": {"auth_type": "trust", "pool_mode": "transaction",
                                 "server_login_retry": "30"}}, USERLIST)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(proc.dsn("postgres"), connect_timeout=10)
    with pytest.raises(psycopg.OperationalError,
                       match=r"server login has been failing, cached error: "
                             r".*password authentication failed.* \(server_login_retry\)"):
        psycopg.connect(proc.dsn("postgres"), connect_timeout=10)
    text = proc.log_text()
    assert re.search(r"S-0x[0-9a-f]+: \S+ closing because: .*password authentication failed",
                     text), text
