"""Every SHOW's columns: names, order and types as PgBouncer sends them.

One table, so the row builders, the RowDescription and the tests all read the same
declaration. Types follow PgBouncer's: names and states ``text``, counts ``int4``, statistics
``numeric``, DNS TTLs and cancel keys ``int8``; times are text (``2026-12-01 21:13:54 UTC``),
as PgBouncer sends them, not ``timestamptz``.
"""

from __future__ import annotations

TEXT = 25
INT4 = 23
INT8 = 20
NUMERIC = 1700
BYTEA = 17

Columns = list[tuple[str, int]]


def _cols(spec: str, names: str) -> Columns:
    """``spec`` has one letter per column: s text, i int4, q int8, N numeric, T a time (sent
    as text), b bytea."""
    kinds = {"s": TEXT, "i": INT4, "q": INT8, "N": NUMERIC, "T": TEXT, "b": BYTEA}
    words = names.split()
    assert len(words) == len(spec), names
    return [(word, kinds[kind]) for word, kind in zip(words, spec, strict=True)]


_STAT_NAMES = ("server_assignment_count xact_count query_count received sent xact_time "
               "query_time wait_time client_parse_count server_parse_count bind_count "
               "client_connect_count")
_AVG_NAMES = ("server_assignment_count xact_count query_count recv sent xact_time query_time "
              "wait_time client_parse_count server_parse_count bind_count "
              "client_connect_count")

STATS = _cols("s" + "N" * 24, "database "
              + " ".join("total_" + n for n in _STAT_NAMES.split()) + " "
              + " ".join("avg_" + n for n in _AVG_NAMES.split()))
STATS_TOTALS = _cols("s" + "N" * 12, "database server_assignment_count xact_count query_count "
                     "bytes_received bytes_sent xact_time query_time wait_time "
                     "client_parse_count server_parse_count bind_count client_connect_count")
STATS_AVERAGES = _cols("s" + "N" * 12, "database server_assignment_count xact_count query_count "
                       "bytes_received bytes_sent xact_time query_time wait_time "
                       "avg_client_parse_count avg_server_parse_count avg_bind_count "
                       "client_connect_count")
TOTALS = _cols("sN", "name value")

POOLS = _cols("ssiiiiiiiiiiiiiss",
              "database user cl_active cl_waiting cl_active_cancel_req cl_waiting_cancel_req "
              "sv_active sv_active_cancel sv_being_canceled sv_idle sv_used sv_tested sv_login "
              "maxwait maxwait_us pool_mode load_balance_hosts")
DATABASES = _cols("ssissiiiissiiiiii",
                  "name host port database force_user pool_size min_pool_size "
                  "reserve_pool_size server_lifetime pool_mode load_balance_hosts "
                  "max_connections current_connections max_client_connections "
                  "current_client_connections paused disabled")
USERS = _cols("ssssiiii", "name pool_size reserve_pool_size pool_mode max_user_connections "
              "current_connections max_user_client_connections current_client_connections")
_SOCKET = ("type user database replication state addr port local_addr local_port "
           "connect_time request_time wait wait_us close_needed ptr link remote_pid tls "
           "application_name prepared_statements id")
CLIENTS = _cols("ssssssisiTTiiississii", _SOCKET)
SERVERS = CLIENTS
SOCKETS = _cols("ssssssisiTTiiississii" + "iiiiiii",
                _SOCKET + " recv_pos pkt_pos pkt_remain send_pos send_remain pkt_avail "
                "send_avail")
LISTS = _cols("si", "list items")
LIST_NAMES = ("databases", "users", "peers", "pools", "peer_pools", "free_clients",
              "used_clients", "login_clients", "free_servers", "used_servers", "dns_names",
              "dns_zones", "dns_queries", "dns_pending")
MEM = _cols("siiii", "name size used free memtotal")
STATE = _cols("ss", "key value")
CONFIG = _cols("ssss", "key value default changeable")
FDS = _cols("issssiqisssssbb", "fd task user database addr port cancel link client_encoding "
            "std_strings datestyle timezone password scram_client_key scram_server_key")
PEERS = _cols("isii", "peer_id host port pool_size")
PEER_POOLS = _cols("iiiii", "peer_id cl_active_cancel_req cl_waiting_cancel_req "
                   "sv_active_cancel sv_login")
DNS_HOSTS = _cols("sqs", "hostname ttl addrs")
DNS_ZONES = _cols("sqi", "zonename serial count")
VERSION = _cols("s", "version")
# pgusher's own: the fleet's claims per database (net/fleet.py); share -1 where unknown.
FLEET = _cols("ssiiiiNi", "database instance demand share granted live heartbeat_age budget")

# pgusher's own: who uses the database.
_LOAD = ("cl_active cl_waiting cl_peak sv_held total_xact_count total_query_count "
         "total_received total_sent total_wait_time max_wait_time total_xact_time "
         "total_query_time")
APPLICATIONS = _cols("siiii" + "N" * 8, "application " + _LOAD)
USER_STATS = _cols("siiii" + "N" * 8, "user " + _LOAD)
