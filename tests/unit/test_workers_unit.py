"""Workers' parts that need no server: the shared table, cancel keys, merging answers."""

from __future__ import annotations

import os
import struct
import tempfile

from pgusher.admin import columns as c
from pgusher.admin.merge import merge_prometheus, merge_show, merge_snapshot
from pgusher.net.cancel import make_key
from pgusher.workers import worker_count
from pgusher.workers.shared import SharedCounts, key_hash
from pgusher.workers.siblings import Reply, parse_reply


def _table(workers: int = 2) -> SharedCounts:
    path = os.path.join(tempfile.mkdtemp(), "lock")
    return SharedCounts(workers, path)


def test_take_holds_the_limit_across_workers() -> None:
    table = _table()
    table.attach(0)
    slot = table.slot(key_hash("pool", "app", "u"))
    assert table.take([(slot, 3)]) and table.take([(slot, 3)])
    table.attach(1)  # the same memory seen from the other worker's column
    slot = table.slot(key_hash("pool", "app", "u"))
    assert table.take([(slot, 3)])
    assert not table.take([(slot, 3)])
    assert table.total(slot) == 3 and table.mine(slot) == 1
    table.give([slot])
    assert table.take([(slot, 3)])


def test_take_is_all_or_nothing() -> None:
    table = _table()
    table.attach(0)
    a, b = table.slot(key_hash("a")), table.slot(key_hash("b"))
    assert table.take([(a, 1), (b, 5)])
    assert not table.take([(a, 1), (b, 5)])
    assert table.total(b) == 1  # b was not counted when a was full
    assert table.take([(a, 0), (b, 5)])  # 0 = no limit, still counted
    assert table.total(a) == 2


def test_a_dead_workers_counts_are_wiped() -> None:
    table = _table(3)
    table.attach(2)
    slot = table.slot(key_hash("db servers", "app"))
    for _ in range(4):
        assert table.take([(slot, 10)])
    table.want(slot, True)
    table.attach(0)
    assert table.wanted_elsewhere(slot)
    table.clear_worker(2)
    assert table.total(slot) == 0 and not table.wanted_elsewhere(slot)


def test_distinct_keys_get_distinct_slots() -> None:
    table = _table()
    table.attach(0)
    offsets = {table.slot(key_hash("pool", "db", str(i))) for i in range(500)}
    assert len(offsets) == 500


def test_cancel_key_names_peer_and_worker() -> None:
    for _ in range(50):
        pid, key = make_key(peer_id=0x1234, worker=3)
        raw = struct.pack("!ii", pid, key)
        assert pid > 0
        assert raw[1] == 0x34 and raw[2] == 0x12 and raw[4] == 3 and raw[7] & 3 == 3
    pid, key = make_key(peer_id=0, worker=0)
    assert pid > 0


def test_cancel_key_keeps_a_real_pid_and_names_the_worker() -> None:
    keys = {make_key(peer_id=0, worker=2, pid=4321) for _ in range(50)}
    assert len(keys) == 50  # the secret is fresh each time
    for pid, key in keys:
        assert pid == 4321
        assert struct.pack("!i", key)[0] == 2


def test_worker_count() -> None:
    assert worker_count("3") == 3
    assert worker_count("auto") >= 1


def _reply(columns: c.Columns, rows: list[list[str | None]]) -> Reply:
    return Reply(columns=columns, rows=rows, tag="SHOW")


def test_merge_pools_adds_counts_and_keeps_the_longest_wait() -> None:
    def row(active: int, waiting: int, wait_s: int, wait_us: int) -> list[str | None]:
        return ["app", "u", str(active), str(waiting), "0", "0", "3", "0", "0", "1", "0",
                "0", "0", str(wait_s), str(wait_us), "transaction", None]

    merged = merge_show("pools", [_reply(c.POOLS, [row(5, 1, 0, 900_000)]),
                                  _reply(c.POOLS, [row(7, 2, 1, 5)])])
    assert merged.rows == [["app", "u", "12", "3", "0", "0", "6", "0", "0", "2", "0", "0", "0",
                            "1", "5", "transaction", None]]


def test_merge_databases_keeps_settings_and_adds_connections() -> None:
    def row(current: int, clients: int, paused: int) -> list[str | None]:
        return ["app", "h", "5432", "app", None, "20", "0", "0", "3600", None, None, "0",
                str(current), "0", str(clients), str(paused), "0"]

    merged = merge_show("databases", [_reply(c.DATABASES, [row(4, 10, 0)]),
                                      _reply(c.DATABASES, [row(6, 5, 1)])])
    (got,) = merged.rows
    assert got[5] == "20" and got[12] == "10" and got[14] == "15" and got[15] == "1"


def test_merge_stats_weights_average_times() -> None:
    names = [n for n, _ in c.STATS]

    def row(xacts: int, avg_count: int, avg_time: int) -> list[str | None]:
        values: list[str | None] = ["app"] + ["0"] * (len(names) - 1)
        values[names.index("total_xact_count")] = str(xacts)
        values[names.index("avg_xact_count")] = str(avg_count)
        values[names.index("avg_xact_time")] = str(avg_time)
        return values

    merged = merge_show("stats", [_reply(c.STATS, [row(100, 30, 100)]),
                                  _reply(c.STATS, [row(50, 10, 500)])])
    (got,) = merged.rows
    assert got[names.index("total_xact_count")] == "150"
    assert got[names.index("avg_xact_count")] == "40"
    assert got[names.index("avg_xact_time")] == "200"  # (30*100 + 10*500) / 40


def test_merge_clients_joins_and_errors_are_left_out() -> None:
    one = ["C"] + ["x"] * (len(c.CLIENTS) - 1)
    failed = Reply(error={"S": "ERROR", "C": "58000", "M": "worker did not answer"})
    merged = merge_show("clients", [_reply(c.CLIENTS, [one]), failed,
                                    _reply(c.CLIENTS, [one, one])])
    assert len(merged.rows) == 3


def test_reply_round_trip() -> None:
    reply = _reply(c.LISTS, [["pools", "2"], ["users", None]])
    assert parse_reply(reply.encode()) == reply


def test_merge_prometheus_adds_counters_and_keeps_largest_settings() -> None:
    page = ("# HELP pgusher_transactions_total Transactions.\n"
            "# TYPE pgusher_transactions_total counter\n"
            'pgusher_transactions_total{database="app"} {n}\n'
            "# HELP pgusher_pool_size Pool size.\n"
            "# TYPE pgusher_pool_size gauge\n"
            'pgusher_pool_size{database="app"} 20\n')
    merged = merge_prometheus([page.replace("{n}", "5"), page.replace("{n}", "7")])
    assert 'pgusher_transactions_total{database="app"} 12\n' in merged
    assert 'pgusher_pool_size{database="app"} 20\n' in merged
    assert merged.count("# HELP pgusher_transactions_total") == 1


def test_merge_snapshot() -> None:
    def snap(clients: int, txns: int) -> dict[str, object]:
        return {"clients": clients, "paused": False,
                "pools": [{"database": "app", "user": "u", "cl_active": clients,
                           "pool_size": 20, "maxwait_seconds": 0.5 * clients,
                           "paused": False}],
                "applications": [{"application": "web", "clients": clients,
                                  "transactions": txns}],
                "users": [{"user": "u", "xact_time_seconds": 1.0}],
                "averages": {"xact_count": 10, "xact_time": 100 * clients}}

    merged = merge_snapshot([snap(2, 10), snap(4, 30)])
    assert merged["clients"] == 6 and merged["workers"] == 2
    assert merged["pools"][0]["cl_active"] == 6 and merged["pools"][0]["pool_size"] == 20
    assert merged["pools"][0]["maxwait_seconds"] == 2.0
    assert merged["applications"][0]["transactions"] == 40
    assert merged["averages"] == {"xact_count": 20, "xact_time": 300}


def test_share_cap_is_stable_for_uneven_limits() -> None:
    from pgusher.workers.balance import share_cap

    assert share_cap(20, 2) == 10 and share_cap(21, 2) == 11 and share_cap(3, 2) == 2
    assert share_cap(1, 2) == 0.5  # smaller than the workers: the server moves between them
