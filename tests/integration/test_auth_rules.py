"""Who is refused, when, and in which words: trust with auth_query, the auth database's
checks, and an unknown database refused only after authentication."""

from __future__ import annotations

import psycopg
import pytest
from consolecase import console, start_console

from support import PgCluster, PoolerFactory

# Readable by any role, so an unprivileged auth_user can run it; no secrets (trust only).
ROLES_QUERY = "SELECT rolname::text, NULL::text FROM pg_catalog.pg_roles WHERE rolname = $1"


def refused(dsn: str) -> str:
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(dsn)
    return str(err.value)


def current_user(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("select current_user").fetchone()
    assert row is not None
    return str(row[0])


def test_trust_with_auth_user_absent_from_auth_file(pg: PgCluster,
                                                    pooler: PoolerFactory) -> None:
    """auth_user has no auth_file entry (the server trusts it); a user auth_query finds with
    a NULL password logs in under trust, one it does not find is told so."""
    proc = start_console(pooler, auth_type="trust", auth_user="trust_user",
                         auth_query=ROLES_QUERY, userlist={"postgres": "postgres"})
    assert current_user(proc.dsn("trust_user")) == "trust_user"
    message = refused(proc.dsn("nobody"))
    assert "no such user" in message
    assert "closing because: no such user" in proc.log_text()
    # Without auth_user, an unknown user is refused as PgBouncer words it.
    plain = start_console(pooler, auth_type="trust", userlist={"postgres": "postgres"})
    assert '"trust" authentication failed' in refused(plain.dsn("nobody"))
    assert 'closing because: "trust" authentication failed' in plain.log_text()


def test_auth_dbname_not_configured(pg: PgCluster, pooler: PoolerFactory) -> None:
    proc = start_console(pooler, auth_type="md5", auth_user="postgres",
                         auth_dbname="nowhere", userlist={"postgres": "postgres"})
    assert "bouncer config error" in refused(proc.dsn("md5_user", "md5_pass"))
    assert 'authentication database "nowhere" is not configured' in proc.log_text()


def test_auth_dbname_disabled(pg: PgCluster, pooler: PoolerFactory) -> None:
    databases = {"app": f"host=127.0.0.1 port={pg.port} dbname=app auth_dbname=authdb",
                 "authdb": f"host=127.0.0.1 port={pg.port} dbname=postgres"}
    proc = start_console(pooler, databases=databases, auth_type="md5", auth_user="postgres",
                         userlist={"postgres": "postgres"})
    assert current_user(proc.dsn("md5_user", "md5_pass")) == "md5_user"
    with console(proc, password="postgres") as admin:
        admin.execute("DISABLE authdb")
    message = refused(proc.dsn("md5_user", "md5_pass"))
    assert 'authentication database "authdb" is disabled' in message


def test_console_database_is_no_auth_dbname(pg: PgCluster, pooler: PoolerFactory) -> None:
    databases = {"app": f"host=127.0.0.1 port={pg.port} dbname=app auth_dbname=pgbouncer"}
    proc = start_console(pooler, databases=databases, auth_type="md5", auth_user="postgres",
                         userlist={"postgres": "postgres"})
    assert "bouncer config error" in refused(proc.dsn("md5_user", "md5_pass"))
    assert 'cannot use the reserved "pgbouncer" database as an auth_dbname' in proc.log_text()
    # As the global setting it is a configuration error: the reload is refused.
    main = {"auth_type": "md5", "auth_user": "postgres", "auth_dbname": "pgbouncer",
            "admin_users": "postgres"}
    proc.write_ini({"databases": pooler.databases(), "pgbouncer": main})
    with console(proc, password="postgres") as admin, \
            pytest.raises(psycopg.Error, match='reserved "pgbouncer" database'):
        admin.execute("RELOAD")


def test_auth_query_error_is_a_config_error(pg: PgCluster, pooler: PoolerFactory) -> None:
    proc = start_console(pooler, auth_type="md5", auth_user="postgres",
                         auth_query="SELECT usename, passwd FROM no_such_table "
                                    "WHERE usename = $1",
                         userlist={"postgres": "postgres"})
    assert "bouncer config error" in refused(proc.dsn("md5_user", "md5_pass"))
    assert 'relation "no_such_table" does not exist' in proc.log_text()


def test_auth_query_database_missing_on_server(pg: PgCluster, pooler: PoolerFactory) -> None:
    """The lookup connection's login fails: the client hears the server's own error."""
    proc = start_console(pooler, databases={"*": f"host=127.0.0.1 port={pg.port}"},
                         auth_type="md5", auth_user="postgres",
                         userlist={"postgres": "postgres"})
    message = refused(proc.dsn("md5_user", "md5_pass", dbname="no_such_db"))
    assert 'database "no_such_db" does not exist' in message
    log = proc.log_text()
    assert 'server login failed: FATAL database "no_such_db" does not exist' in log
    assert 'closing because: database "no_such_db" does not exist' in log


@pytest.mark.parametrize("auth_type", ["md5", "scram-sha-256", "plain"])
def test_unknown_database_after_authentication(pg: PgCluster, pooler: PoolerFactory,
                                               auth_type: str) -> None:
    """A wrong password is refused as such, whatever the database; only a client that
    proved who it is learns that the database does not exist."""
    proc = start_console(pooler, auth_type=auth_type,
                         userlist={"postgres": "postgres", "scram_user": "scram_pass"})
    word = "SASL" if auth_type == "scram-sha-256" else "password"
    wrong = refused(proc.dsn("scram_user", "wrong", dbname="nosuchdb"))
    assert f'{word} authentication failed for user "scram_user"' in wrong
    right = refused(proc.dsn("scram_user", "scram_pass", dbname="nosuchdb"))
    assert "no such database: nosuchdb" in right
    assert "closing because: no such database: nosuchdb" in proc.log_text()
