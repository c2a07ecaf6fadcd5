"""prometheus-community/pgbouncer_exporter against pgusher, played step by step.

The exporter (Go, lib/pq) cannot run here, so this test does what its collector does: it
connects the way lib/pq does (extra_float_digits, client_encoding and datestyle in the
startup packet, md5 password), sends the same simple queries, reads columns by name, converts
values the way lib/pq hands them to database/sql (int4 -> int64, numeric -> []byte, text ->
string), and applies the exporter's column mappings. Every metric it would emit is checked,
and so is the absence of the parsing errors that would make it report pgbouncer_up 0.
"""

from __future__ import annotations

import hashlib
import math
import socket
import struct

import psycopg
from consolecase import ADMIN, start_console

from support import PoolerFactory

INT_OIDS = {20, 21, 23}
FLOAT_OIDS = {700, 701}

Value = int | float | bytes | str | None


class LibPqLike:
    """The part of lib/pq the exporter exercises: startup, md5 auth, simple queries."""

    def __init__(self, host: str, port: int, user: str, password: str) -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.buf = b""
        params = {"user": user, "database": "pgbouncer", "extra_float_digits": "2",
                  "client_encoding": "UTF8", "datestyle": "ISO, MDY"}
        body = struct.pack("!i", 196608) + b"".join(
            k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
        self.sock.sendall(struct.pack("!i", len(body) + 4) + body)
        self.params: dict[str, str] = {}
        while True:
            kind, payload = self._read()
            if kind == b"R":
                code = struct.unpack_from("!i", payload)[0]
                if code == 5:
                    inner = hashlib.md5((password + user).encode()).hexdigest()
                    outer = hashlib.md5(inner.encode() + payload[4:8]).hexdigest()
                    self._send(b"p", b"md5" + outer.encode() + b"\0")
                elif code != 0:
                    raise AssertionError(f"unexpected auth request {code}")
            elif kind == b"S":
                name, value = payload.rstrip(b"\0").split(b"\0")
                self.params[name.decode()] = value.decode()
            elif kind == b"E":
                raise AssertionError(f"login failed: {payload!r}")
            elif kind == b"Z":
                break
        # lib/pq refuses a server whose client_encoding is not UTF8.
        assert self.params["client_encoding"] == "UTF8"

    def _send(self, kind: bytes, body: bytes) -> None:
        self.sock.sendall(kind + struct.pack("!i", len(body) + 4) + body)

    def _read(self) -> tuple[bytes, bytes]:
        while True:
            if len(self.buf) >= 5:
                length = struct.unpack_from("!i", self.buf, 1)[0]
                if len(self.buf) >= length + 1:
                    kind, payload = self.buf[:1], self.buf[5:length + 1]
                    self.buf = self.buf[length + 1:]
                    return kind, payload
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError("connection closed")
            self.buf += chunk

    def query(self, sql: str) -> tuple[list[str], list[list[Value]]]:
        self._send(b"Q", sql.encode() + b"\0")
        names: list[str] = []
        oids: list[int] = []
        rows: list[list[Value]] = []
        error = None
        while True:
            kind, payload = self._read()
            if kind == b"T":
                count = struct.unpack_from("!h", payload)[0]
                pos = 2
                for _ in range(count):
                    end = payload.index(b"\0", pos)
                    names.append(payload[pos:end].decode())
                    oids.append(struct.unpack_from("!ihih", payload, end + 1)[2])
                    pos = end + 1 + 18
            elif kind == b"D":
                count = struct.unpack_from("!h", payload)[0]
                pos = 2
                row: list[Value] = []
                for i in range(count):
                    size = struct.unpack_from("!i", payload, pos)[0]
                    pos += 4
                    if size < 0:
                        row.append(None)
                        continue
                    raw = payload[pos:pos + size]
                    pos += size
                    row.append(decode(oids[i], raw))
                rows.append(row)
            elif kind == b"E":
                error = payload
            elif kind == b"Z":
                if error is not None:
                    raise AssertionError(f"{sql}: {error!r}")
                return names, rows

    def close(self) -> None:
        self._send(b"X", b"")
        self.sock.close()


def decode(oid: int, raw: bytes) -> Value:
    """What lib/pq's text decoding hands to database/sql for these types."""
    if oid in INT_OIDS:
        return int(raw)
    if oid in FLOAT_OIDS:
        return float(raw)
    if oid == 25 or oid == 1043:
        return raw.decode()
    return raw  # numeric and the rest arrive as []byte


def to_float(value: Value) -> float | None:
    """The exporter's dbToFloat64: None when the conversion fails (a non-fatal error)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, bytes | str):
        try:
            return float(value)
        except ValueError:
            return None
    if value is None:
        return math.nan
    return None


def label_text(value: Value) -> str:
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:f}"
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    raise AssertionError(f"unhandled label type {value!r}")


L = "LABEL"
# The exporter's metricMaps: column -> (usage, metric name, factor).
METRIC_MAPS: dict[str, dict[str, tuple[str, str, float]]] = {
    "databases": {
        "name": (L, "", 1), "host": (L, "", 1), "port": (L, "", 1), "database": (L, "", 1),
        "force_user": (L, "", 1), "pool_size": ("GAUGE", "pool_size", 1),
        "reserve_pool": ("GAUGE", "reserve_pool", 1), "pool_mode": (L, "", 1),
        "max_connections": ("GAUGE", "max_connections", 1),
        "current_connections": ("GAUGE", "current_connections", 1),
        "paused": ("GAUGE", "paused", 1), "disabled": ("GAUGE", "disabled", 1),
    },
    "stats_totals": {
        "database": (L, "", 1),
        "query_count": ("COUNTER", "queries_pooled_total", 1),
        "query_time": ("COUNTER", "queries_duration_seconds_total", 1e-6),
        "bytes_received": ("COUNTER", "received_bytes_total", 1),
        "requests": ("COUNTER", "queries_total", 1),
        "bytes_sent": ("COUNTER", "sent_bytes_total", 1),
        "wait_time": ("COUNTER", "client_wait_seconds_total", 1e-6),
        "xact_count": ("COUNTER", "sql_transactions_pooled_total", 1),
        "xact_time": ("COUNTER", "server_in_transaction_seconds_total", 1e-6),
        "client_parse_count": ("COUNTER", "client_parses_total", 1),
        "server_parse_count": ("COUNTER", "server_parses_total", 1),
        "bind_count": ("COUNTER", "binds_total", 1),
    },
    "pools": {
        "database": (L, "", 1), "user": (L, "", 1),
        "cl_active": ("GAUGE", "client_active_connections", 1),
        "cl_active_cancel_req": ("GAUGE", "client_active_cancel_connections", 1),
        "cl_waiting": ("GAUGE", "client_waiting_connections", 1),
        "cl_waiting_cancel_req": ("GAUGE", "client_waiting_cancel_connections", 1),
        "sv_active": ("GAUGE", "server_active_connections", 1),
        "sv_active_cancel": ("GAUGE", "server_active_cancel_connections", 1),
        "sv_being_canceled": ("GAUGE", "server_being_canceled_connections", 1),
        "sv_idle": ("GAUGE", "server_idle_connections", 1),
        "sv_used": ("GAUGE", "server_used_connections", 1),
        "sv_tested": ("GAUGE", "server_testing_connections", 1),
        "sv_login": ("GAUGE", "server_login_connections", 1),
        "maxwait": ("GAUGE", "client_maxwait_seconds", 1),
    },
}
LISTS = {"databases": "databases", "users": "users", "pools": "pools",
         "free_clients": "free_clients", "used_clients": "used_clients",
         "login_clients": "login_clients", "free_servers": "free_servers",
         "used_servers": "used_servers", "dns_names": "cached_dns_names",
         "dns_zones": "cached_dns_zones", "dns_queries": "in_flight_dns_queries"}
CONFIG = {"max_client_conn": "config_max_client_connections",
          "max_user_connections": "config_max_user_connections"}

Metric = tuple[str, tuple[tuple[str, str], ...]]


def collect(db: LibPqLike) -> tuple[dict[Metric, float], list[str]]:
    """One scrape, as the exporter's Collect does it; (metrics, non-fatal errors)."""
    metrics: dict[Metric, float] = {}
    errors: list[str] = []
    db.query("SHOW STATS")  # getDB's ping
    names, rows = db.query("SHOW VERSION;")
    assert names == ["version"]
    for row in rows:
        metrics[("pgbouncer_version_info", (("version", str(row[0])),))] = 1.0
    names, rows = db.query("SHOW LISTS;")
    assert len(names) == 2
    for name, items in rows:
        value = float(items) if isinstance(items, int) else float(str(items))
        if name in LISTS:
            metrics[(f"pgbouncer_{LISTS[str(name)]}", ())] = value
    names, rows = db.query("SHOW CONFIG;")
    assert len(names) in (3, 4)
    for row in rows:
        key, value = row[0], row[1]
        if key in CONFIG:
            metrics[(f"pgbouncer_{CONFIG[str(key)]}", ())] = float(str(value))
    for namespace, mapping in METRIC_MAPS.items():
        names, rows = db.query(f"SHOW {namespace};")
        label_names = [col for col, (usage, _, _) in mapping.items() if usage == L]
        for row in rows:
            by_name = dict(zip(names, row, strict=True))
            labels = tuple((ln, label_text(by_name.get(ln))) for ln in label_names)
            for column, value in by_name.items():
                found = mapping.get(column)
                if found is None or found[0] == L:
                    continue
                number = to_float(value)
                if number is None:
                    errors.append(f"{namespace}.{column}={value!r}")
                    continue
                metrics[(f"pgbouncer_{namespace}_{found[1]}", labels)] = number * found[2]
    return metrics, errors


def test_exporter_scrape(pooler: PoolerFactory) -> None:
    proc = start_console(pooler, auth_type="md5", pool_size=3, max_client_conn=150)
    with psycopg.connect(proc.dsn("postgres", password="postgres"), autocommit=True) as client:
        for _ in range(5):
            client.execute("select pg_sleep(0.01)")
        db = LibPqLike(proc.host, proc.port, ADMIN, "postgres")
        try:
            metrics, errors = collect(db)
        finally:
            db.close()
    assert errors == []
    emitted = {name for name, _ in metrics}
    expected = {"pgbouncer_version_info", *(f"pgbouncer_{v}" for v in LISTS.values()),
                *(f"pgbouncer_{v}" for v in CONFIG.values())}
    # PgBouncer 1.24's column names: reserve_pool became reserve_pool_size and stats_totals
    # never had requests, so the exporter emits neither against PgBouncer itself either.
    for namespace, mapping in METRIC_MAPS.items():
        expected |= {f"pgbouncer_{namespace}_{metric}" for col, (usage, metric, _) in
                     mapping.items() if usage != L and col not in ("reserve_pool", "requests")}
    assert emitted == expected
    assert proc.pg is not None
    app_db = (("name", "app"), ("host", "127.0.0.1"), ("port", str(proc.pg.port)),
              ("database", "app"), ("force_user", ""), ("pool_mode", ""))
    assert metrics[("pgbouncer_databases_pool_size", app_db)] == 3
    assert metrics[("pgbouncer_databases_current_connections", app_db)] == 1
    pool = (("database", "app"), ("user", "postgres"))
    assert metrics[("pgbouncer_pools_client_active_connections", pool)] == 1
    assert metrics[("pgbouncer_pools_server_idle_connections", pool)] == 1
    stats = (("database", "app"),)
    assert metrics[("pgbouncer_stats_totals_sql_transactions_pooled_total", stats)] == 5
    assert metrics[("pgbouncer_stats_totals_queries_pooled_total", stats)] == 5
    assert metrics[("pgbouncer_stats_totals_server_in_transaction_seconds_total", stats)] >= 0.05
    assert metrics[("pgbouncer_config_max_client_connections", ())] == 150
    assert metrics[("pgbouncer_used_clients", ())] >= 2
    version = next(labels for name, labels in metrics if name == "pgbouncer_version_info")
    assert version == (("version", "pgusher 0.1.0"),)


