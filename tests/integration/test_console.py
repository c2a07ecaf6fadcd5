"""The admin console: PgBouncer's SHOW columns and types, permissions, psql and psycopg."""

from __future__ import annotations

import getpass
import subprocess
from typing import Any

import psycopg
import pytest
from consolecase import ADMIN, STATS, console, pool_row, show, start_console
from psycopg import pq

from pgusher.cli import version_text
from support import PoolerFactory, run_psql, tool_path
from support.pg import as_user_kwargs, user_env

TEXT, INT4, INT8, NUMERIC = 25, 23, 20, 1700

_SOCKET = ("type user database replication state addr port local_addr local_port connect_time "
           "request_time wait wait_us close_needed ptr link remote_pid tls application_name "
           "prepared_statements id")
_TOTALS = ("server_assignment_count xact_count query_count bytes_received bytes_sent xact_time "
           "query_time wait_time client_parse_count server_parse_count bind_count "
           "client_connect_count")
# PgBouncer's documented column lists (usage.md and its admin.c/stats.c), in order.
EXPECTED = {
    "STATS": "database total_server_assignment_count total_xact_count total_query_count "
             "total_received total_sent total_xact_time total_query_time total_wait_time "
             "total_client_parse_count total_server_parse_count total_bind_count "
             "total_client_connect_count avg_server_assignment_count avg_xact_count "
             "avg_query_count avg_recv avg_sent avg_xact_time avg_query_time avg_wait_time "
             "avg_client_parse_count avg_server_parse_count avg_bind_count "
             "avg_client_connect_count",
    "STATS_TOTALS": "database " + _TOTALS,
    "STATS_AVERAGES": "database server_assignment_count xact_count query_count bytes_received "
                      "bytes_sent xact_time query_time wait_time avg_client_parse_count "
                      "avg_server_parse_count avg_bind_count client_connect_count",
    "TOTALS": "name value",
    "POOLS": "database user cl_active cl_waiting cl_active_cancel_req cl_waiting_cancel_req "
             "sv_active sv_active_cancel sv_being_canceled sv_idle sv_used sv_tested sv_login "
             "maxwait maxwait_us pool_mode load_balance_hosts",
    "DATABASES": "name host port database force_user pool_size min_pool_size reserve_pool_size "
                 "server_lifetime pool_mode load_balance_hosts max_connections "
                 "current_connections max_client_connections current_client_connections "
                 "paused disabled",
    "USERS": "name pool_size reserve_pool_size pool_mode max_user_connections "
             "current_connections max_user_client_connections current_client_connections",
    "CLIENTS": _SOCKET,
    "SERVERS": _SOCKET,
    "SOCKETS": _SOCKET + " recv_pos pkt_pos pkt_remain send_pos send_remain pkt_avail "
                         "send_avail",
    "ACTIVE_SOCKETS": _SOCKET + " recv_pos pkt_pos pkt_remain send_pos send_remain pkt_avail "
                                "send_avail",
    "LISTS": "list items",
    "MEM": "name size used free memtotal",
    "STATE": "key value",
    "CONFIG": "key value default changeable",
    "FDS": "fd task user database addr port cancel link client_encoding std_strings datestyle "
           "timezone password scram_client_key scram_server_key",
    "PEERS": "peer_id host port pool_size",
    "PEER_POOLS": "peer_id cl_active_cancel_req cl_waiting_cancel_req sv_active_cancel sv_login",
    "DNS_HOSTS": "hostname ttl addrs",
    "DNS_ZONES": "zonename serial count",
    "VERSION": "version",
}
LISTS = ["databases", "users", "peers", "pools", "peer_pools", "free_clients", "used_clients",
         "login_clients", "free_servers", "used_servers", "dns_names", "dns_zones",
         "dns_queries", "dns_pending"]


def test_every_show_has_pgbouncers_columns_and_types(pooler: PoolerFactory) -> None:
    proc = start_console(pooler)
    with psycopg.connect(proc.dsn("postgres", application_name="colcheck"),
                         autocommit=True) as client:
        client.execute("select 1")
        with console(proc) as admin:
            for what, names in EXPECTED.items():
                cur = admin.execute(f"SHOW {what}")
                assert cur.description is not None
                assert [d.name for d in cur.description] == names.split(), what
                cur.fetchall()
            types = {d.name: d.type_code for d in admin.execute("SHOW STATS").description or []}
            assert types["database"] == TEXT
            assert {t for n, t in types.items() if n != "database"} == {NUMERIC}
            types = {d.name: d.type_code for d in admin.execute("SHOW POOLS").description or []}
            assert types["database"] == types["user"] == types["pool_mode"] == TEXT
            assert types["cl_active"] == types["sv_idle"] == types["maxwait"] == INT4
            types = {d.name: d.type_code for d in admin.execute("SHOW CLIENTS").description or []}
            # PgBouncer sends its times as text: "2026-12-01 21:13:54 UTC".
            assert types["connect_time"] == types["request_time"] == TEXT
            assert types["id"] == INT4
            assert types["prepared_statements"] == INT4
            assert [r["list"] for r in show(admin, "LISTS")] == LISTS
            assert [r["key"] for r in show(admin, "STATE")] == ["active", "paused", "suspended"]
            version = show(admin, "VERSION")
            assert version == [{"version": proc_version()}]
            pools = pool_row(admin)
            assert pools["cl_active"] == 1 and pools["sv_idle"] == 1
            assert pools["pool_mode"] == "transaction"
            clients = [r for r in show(admin, "CLIENTS") if r["database"] == "app"]
            assert len(clients) == 1 and clients[0]["application_name"] == "colcheck"
            assert clients[0]["state"] == "idle" and clients[0]["addr"] == "127.0.0.1"
            servers = show(admin, "SERVERS")
            assert len(servers) == 1 and servers[0]["state"] == "idle"
            assert servers[0]["remote_pid"] > 0
            assert clients[0]["prepared_statements"] == servers[0]["prepared_statements"] == 0
            config = {r["key"]: r for r in show(admin, "CONFIG")}
            assert config["pool_mode"]["value"] == "transaction"
            assert config["listen_port"]["changeable"] == "no"
            assert config["default_pool_size"]["default"] == "20"
            databases = {r["name"]: r for r in show(admin, "DATABASES")}
            assert databases["app"]["pool_size"] == 5 and databases["app"]["paused"] == 0
            assert databases["app"]["current_client_connections"] == 1
            assert databases["pgbouncer"]["current_client_connections"] == 1
            stats = {r["database"]: r for r in show(admin, "STATS")}
            assert stats["app"]["total_xact_count"] >= 1
            assert stats["app"]["total_client_connect_count"] == 1


QUERIES = [b"select 1", b"select 2", b"select $1::int + 1"]


def _prepare_all(conn: psycopg.Connection[Any], prefix: bytes) -> None:
    """Named protocol-level statements (Parse + Sync), each run once to prove it works."""
    for n, query in enumerate(QUERIES):
        name = prefix + str(n).encode()
        assert conn.pgconn.prepare(name, query).status == pq.ExecStatus.COMMAND_OK
        params = [b"41"] if b"$1" in query else None
        res = conn.pgconn.exec_prepared(name, params)
        assert res.status == pq.ExecStatus.TUPLES_OK
        assert res.get_value(0, 0) == (b"42" if params else query[-1:])


def _prepared_counts(admin: psycopg.Connection[Any]) -> tuple[dict[str, int], list[int]]:
    """(prepared_statements per application_name of app's clients, per server)."""
    clients = {r["application_name"]: r["prepared_statements"]
               for r in show(admin, "CLIENTS") if r["database"] == "app"}
    servers = [r["prepared_statements"] for r in show(admin, "SERVERS")
               if r["database"] == "app"]
    return clients, servers


def test_prepared_statements_counted_in_clients_and_servers(pooler: PoolerFactory) -> None:
    proc = start_console(pooler, pool_size=1)
    with psycopg.connect(proc.dsn("postgres", application_name="one"), autocommit=True) as one, \
            psycopg.connect(proc.dsn("postgres", application_name="two"),
                            autocommit=True) as two, console(proc) as admin:
        _prepare_all(one, b"n")
        clients, servers = _prepared_counts(admin)
        assert clients == {"one": 3, "two": 0}
        assert len(servers) == 1 and servers[0] >= 3
        # The same queries under other names: the client has its own 3, the server shares them.
        _prepare_all(two, b"other_")
        clients, servers = _prepared_counts(admin)
        assert clients == {"one": 3, "two": 3}
        assert servers == [3]
        if pq.version() >= 170000:  # libpq's Close of a statement
            # A Close removes the client's statement; the server keeps it for the other client.
            assert one.pgconn.close_prepared(b"n0").status == pq.ExecStatus.COMMAND_OK
            clients, servers = _prepared_counts(admin)
            assert clients == {"one": 2, "two": 3}
            assert servers == [3]
        # The console session itself prepares nothing.
        assert [r["prepared_statements"] for r in show(admin, "CLIENTS")
                if r["database"] == "pgbouncer"] == [0]


def test_prepared_statements_zero_in_session_mode(pooler: PoolerFactory) -> None:
    proc = start_console(pooler, "session", pool_size=1)
    with psycopg.connect(proc.dsn("postgres", application_name="one"), autocommit=True) as one, \
            console(proc) as admin:
        _prepare_all(one, b"n")
        clients, servers = _prepared_counts(admin)
        assert clients == {"one": 0} and servers == [0]


def proc_version() -> str:
    """The first line of ``pgusher --version``."""
    return version_text().splitlines()[0]


def test_version_matches_command_line(pooler: PoolerFactory) -> None:
    proc = start_console(pooler)
    with console(proc) as admin:
        assert show(admin, "VERSION")[0]["version"] == proc_version()
        params = admin.pgconn.parameter_status
        assert params(b"server_version") is not None
        assert (params(b"server_version") or b"").endswith(b"/bouncer")
        assert params(b"client_encoding") == b"UTF8"
        assert params(b"DateStyle") == b"ISO" and params(b"TimeZone") == b"GMT"
        assert params(b"standard_conforming_strings") == b"on"
        assert params(b"is_superuser") == b"on"


def test_permissions(pooler: PoolerFactory) -> None:
    proc = start_console(pooler)
    with console(proc, STATS, password="md5_pass") as stats:
        assert show(stats, "POOLS") is not None
        for command in ("PAUSE", "RESUME", "RELOAD", "KILL app", "SHUTDOWN", "SHOW FDS",
                        "SET default_pool_size = 3"):
            with pytest.raises(psycopg.Error, match="admin access needed") as info:
                stats.execute(command)
            assert info.value.sqlstate == "08P01"
        stats.execute("SHOW STATE")  # the session survives errors
    with pytest.raises(psycopg.OperationalError, match="not allowed"):
        console(proc, "plain_user", password="plain_pass")
    with console(proc, ADMIN) as admin:
        with pytest.raises(psycopg.Error, match="invalid command 'BOGUS', use SHOW HELP;"):
            admin.execute("BOGUS")
        with pytest.raises(psycopg.Error, match="extended query protocol not supported"):
            admin.execute("SHOW %s", ["POOLS"], prepare=False)  # type: ignore[call-overload]


def test_unix_socket_login_as_own_user_needs_no_password(pooler: PoolerFactory) -> None:
    """The user the pooler runs as (postgres once ``-u postgres`` switched it) logs in to the
    console over the unix socket without a password, from a process of that user."""
    proc = start_console(pooler, auth_type="md5")
    me = proc.owner or getpass.getuser()
    for user in (me, "pgbouncer"):
        res = subprocess.run(
            [tool_path("psql"), "-X", "-d", proc.unix_dsn(user, dbname="pgbouncer"),
             "-c", "PAUSE app", "-c", "RESUME app"],  # admin rights
            capture_output=True, text=True, timeout=30, check=False, env=user_env(proc.owner),
            stdin=subprocess.DEVNULL, **as_user_kwargs(proc.owner))
        assert res.returncode == 0, res.stderr
        assert res.stdout.split() == ["PAUSE", "RESUME"], res.stdout
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(proc.dsn(me, dbname="pgbouncer"), autocommit=True)  # TCP: password
    if proc.owner is not None:  # another OS user on the socket: a password is asked for
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(proc.unix_dsn(me, dbname="pgbouncer"), autocommit=True)


def test_psql_plain_and_expanded_output_of_every_show(pooler: PoolerFactory) -> None:
    proc = start_console(pooler)
    psql = tool_path("psql")
    dsn = proc.dsn(ADMIN, dbname="pgbouncer")
    script = "".join(f"SHOW {what};\n" for what in [*EXPECTED, "HELP", "APPLICATIONS",
                                                     "USER_STATS"])
    plain = subprocess.run([psql, "-X", "-v", "ON_ERROR_STOP=1", "-d", dsn], input=script,
                           capture_output=True, text=True, timeout=60, check=False)
    assert plain.returncode == 0, plain.stderr
    assert "cl_waiting_cancel_req" in plain.stdout and "(1 row)" in plain.stdout
    assert "Console usage" in plain.stderr
    expanded = subprocess.run([psql, "-X", "-v", "ON_ERROR_STOP=1", "-d", dsn],
                              input="\\x on\n" + script, capture_output=True, text=True,
                              timeout=60, check=False)
    assert expanded.returncode == 0, expanded.stderr
    assert "-[ RECORD 1 ]" in expanded.stdout
    assert "total_client_connect_count" in expanded.stdout
    one = run_psql(dsn, "SHOW VERSION")
    assert one.returncode == 0 and one.stdout.strip() == proc_version()
