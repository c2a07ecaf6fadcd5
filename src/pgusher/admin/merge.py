"""One answer from many workers: SHOW rows, /metrics text and the dashboard snapshot.

Strategy: every worker answers for itself, and the answers are merged by what each column
means, read from its name and type. Lists of connections are joined. Rows about the same
thing (a pool, a database, a user, an application) are folded into one: counts and totals
add up; configured values and states (pool_size, paused, ...) and the longest wait take the
largest; averages of times are weighted by the counts they average over. Text columns keep
the first worker's value. Answers about the process itself (CONFIG, STATE, VERSION) are the
asking worker's own, since every worker runs the same configuration.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ..workers.siblings import Reply
from . import columns as c

Row = list[str | None]

# SHOW name -> how many leading columns name the thing a row is about.
KEYED = {"stats": 1, "stats_totals": 1, "stats_averages": 1, "totals": 1, "pools": 2,
         "databases": 1, "users": 1, "lists": 1, "mem": 1, "applications": 1,
         "user_stats": 1, "users_stats": 1, "peer_pools": 1, "fleet": 2}
JOINED = frozenset({"clients", "servers", "sockets", "active_sockets", "fds", "dns_hosts",
                    "dns_zones"})

# Columns that describe configuration or state rather than count something: the largest.
LARGEST = frozenset({
    "pool_size", "min_pool_size", "reserve_pool_size", "reserve_pool", "server_lifetime",
    "port", "max_connections", "max_client_connections", "max_user_connections",
    "max_user_client_connections", "paused", "disabled", "size", "max_wait_time", "peer_id",
    # SHOW FLEET: every worker is a member and sees the same rows.
    "demand", "share", "granted", "live", "heartbeat_age", "budget"})

# Averaged times and the counts they are averages over: SHOW STATS and TOTALS name them
# with an avg_ prefix, SHOW STATS_AVERAGES and the dashboard snapshot without.
_TIME_COUNTS = {"xact_time": "xact_count", "query_time": "query_count",
                "wait_time": "server_assignment_count"}
PREFIXED_WEIGHTS = {f"avg_{k}": f"avg_{v}" for k, v in _TIME_COUNTS.items()}
WEIGHTS = {"stats": PREFIXED_WEIGHTS, "totals": PREFIXED_WEIGHTS,
           "stats_averages": _TIME_COUNTS}
_NUMERIC = frozenset({c.INT4, c.INT8, c.NUMERIC})


def merge_show(name: str, replies: Sequence[Reply]) -> Reply:
    """``replies[0]`` is the asking worker's own; the rest are its siblings'."""
    local = replies[0]
    if local.error is not None or local.columns is None:
        return local
    good = [r for r in replies if r.error is None and r.columns == local.columns]
    if name in JOINED:
        rows = [row for r in good for row in r.rows]
    elif name in KEYED:
        rows = _fold(name, local.columns, [r.rows for r in good], KEYED[name])
    else:
        return local
    return Reply(columns=local.columns, rows=rows, tag=local.tag, notices=local.notices)


def _number(value: str | None) -> float:
    if value is None or value == "":
        return 0
    try:
        return int(value)
    except ValueError:
        return float(value)


def _text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _fold(name: str, columns: list[tuple[str, int]], sets: list[list[Row]],
          keys: int) -> list[Row]:
    groups: dict[tuple[str | None, ...], list[Row]] = {}
    for rows in sets:
        for row in rows:
            groups.setdefault(tuple(row[:keys]), []).append(row)
    names = [col for col, _ in columns]
    weights = WEIGHTS.get(name, {})
    if name == "totals":
        return _fold_totals(groups, weights)
    out = []
    for group in groups.values():
        merged: Row = list(group[0])
        for i, (col, oid) in enumerate(columns):
            if i < keys or oid not in _NUMERIC:
                continue
            values = [_number(row[i]) for row in group]
            if col in LARGEST:
                merged[i] = _text(max(values))
            elif col in weights and weights[col] in names:
                w = names.index(weights[col])
                merged[i] = _text(_weighted(values, [_number(row[w]) for row in group]))
            else:
                merged[i] = _text(sum(values))
        if name == "pools":
            _longest_wait(merged, group, names)
        out.append(merged)
    return out


def _weighted(values: list[float], weights: list[float]) -> float:
    total = sum(weights)
    if not total:
        return max(values) if values else 0
    return int(sum(v * w for v, w in zip(values, weights, strict=True)) / total)


def _longest_wait(merged: Row, group: list[Row], names: list[str]) -> None:
    """maxwait and maxwait_us are one figure in two columns: take the longest wait whole."""
    s, us = names.index("maxwait"), names.index("maxwait_us")
    longest = max(int(_number(row[s])) * 1_000_000 + int(_number(row[us])) for row in group)
    merged[s], merged[us] = str(longest // 1_000_000), str(longest % 1_000_000)


def _fold_totals(groups: dict[tuple[str | None, ...], list[Row]],
                 weights: dict[str, str]) -> list[Row]:
    """SHOW TOTALS: one (name, value) row per figure; averages weighted like SHOW STATS."""
    per_worker: dict[str, list[float]] = {str(k[0]): [_number(r[1]) for r in rows]
                                          for k, rows in groups.items()}
    out: list[Row] = []
    for key, values in per_worker.items():
        weight = weights.get(key)
        if weight is not None and weight in per_worker:
            value = _weighted(values, per_worker[weight])
        else:
            value = sum(values)
        out.append([key, _text(value)])
    return out


# ---------------------------------------------------------------------- /metrics


# Families whose samples are settings or extremes, not amounts: the largest value wins.
_PROM_LARGEST = frozenset({"pgusher_fleet_budget_connections", "pgusher_fleet_members",
                           "pgusher_fleet_granted_connections",
                           "pgusher_fleet_heartbeat_age_seconds", "pgusher_info",
                           "pgusher_paused", "pgusher_client_wait_seconds_max",
                           "pgusher_pool_maxwait_seconds", "pgusher_pool_size",
                           "pgusher_database_max_connections", "pgusher_database_pool_size",
                           "pgusher_database_paused", "pgusher_database_disabled",
                           "pgusher_database_reserve_pool_size",
                           "pgusher_config_max_client_connections",
                           "pgusher_config_max_user_connections",
                           "process_max_fds", "process_start_time_seconds"})


def merge_prometheus(texts: Iterable[str]) -> str:
    """Add up the samples of several workers' /metrics pages, family by family."""
    order: list[str] = []
    heads: dict[str, list[str]] = {}
    samples: dict[str, dict[str, float]] = {}
    for text in texts:
        family = ""
        for line in text.splitlines():
            if line.startswith("# HELP "):
                family = line.split(" ", 3)[2]
                if family not in heads:
                    order.append(family)
                    heads[family] = [line]
                    samples[family] = {}
            elif line.startswith("# TYPE "):
                if len(heads.get(family, [])) == 1:
                    heads[family].append(line)
            elif line and family:
                series, _, value = line.rpartition(" ")
                have = samples[family]
                number = float(value)
                if series not in have:
                    have[series] = number
                elif family in _PROM_LARGEST:
                    have[series] = max(have[series], number)
                else:
                    have[series] += number
    lines: list[str] = []
    for family in order:
        lines += heads[family]
        lines += [f"{series} {_prom_number(v)}" for series, v in samples[family].items()]
    return "\n".join(lines) + "\n"


def _prom_number(value: float) -> str:
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


# ---------------------------------------------------------------------- dashboard snapshot

_SNAPSHOT_LISTS = {"pools": ("database", "user"), "applications": ("application",),
                   "users": ("user",), "databases": ("database",)}
_SNAPSHOT_LARGEST = frozenset({"pool_size", "max_db_connections", "maxwait_seconds",
                               "wait_max_seconds", "paused", "pool_count", "maxwait"})


def merge_snapshot(snapshots: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Fold several workers' JSON snapshots into one, the first worker's as the frame."""
    out = dict(snapshots[0])
    out["clients"] = sum(int(s.get("clients", 0)) for s in snapshots)
    out["paused"] = any(s.get("paused") for s in snapshots)
    out["workers"] = len(snapshots)
    for name, keys in _SNAPSHOT_LISTS.items():
        folded: dict[tuple[Any, ...], dict[str, Any]] = {}
        for snap in snapshots:
            for item in snap.get(name, []):
                key = tuple(item.get(k) for k in keys)
                have = folded.get(key)
                folded[key] = dict(item) if have is None else _add_items(have, item)
        out[name] = list(folded.values())
    out["pools"].sort(key=lambda p: (p["database"], p["user"]))
    out["applications"].sort(key=lambda a: (-a["clients"], a["application"]))
    out["users"].sort(key=lambda u: (-u["xact_time_seconds"], u["user"]))
    out["databases"].sort(key=lambda d: d["database"])
    failures: dict[str, int] = {}
    for snap in snapshots:
        for key, value in snap.get("failures", {}).items():
            failures[key] = failures.get(key, 0) + value
    out["failures"] = failures
    out["fleet"] = _merge_fleet(snapshots)
    out["history"] = _merge_history([s["history"] for s in snapshots if "history" in s])
    per_worker: dict[str, list[float]] = {}
    for snap in snapshots:
        for key, value in snap.get("averages", {}).items():
            per_worker.setdefault(key, []).append(value)
    counts = _TIME_COUNTS
    out["averages"] = {key: (_weighted(values, per_worker[counts[key]])
                             if key in counts and counts[key] in per_worker
                             and len(per_worker[counts[key]]) == len(values)
                             else sum(values))
                       for key, values in per_worker.items()}
    return out


def _merge_fleet(snapshots: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every worker is a member of its own: each member once, from its own worker's
    snapshot where there is one (the freshest figures), else as another worker read it."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for snap in snapshots:
        for row in snap.get("fleet", []):
            key = (row["database"], row["instance"])
            if key not in rows or (row["self"] and not rows[key]["self"]):
                rows[key] = row
    return sorted(rows.values(), key=lambda r: (r["database"], r["instance"]))


def _merge_history(histories: list[dict[str, Any]]) -> dict[str, Any]:
    """Add the workers' rings point by point; their points share the times (multiples of
    the interval), and a worker without a point at some time counts as zero there."""
    if not histories:
        return {}
    times = sorted({t for h in histories for t in h["times"]})
    index = {t: i for i, t in enumerate(times)}
    out: dict[str, Any] = {"interval": histories[0]["interval"], "times": times}
    for kind in ("pools", "applications"):
        merged: dict[str, dict[str, list[float]]] = {}
        for h in histories:
            for key, ring in h[kind].items():
                into = merged.setdefault(key, {})
                for name, values in ring.items():
                    line = into.setdefault(name, [0.0] * len(times))
                    # A ring holds one value per time of its own worker, the latest last.
                    for t, v in zip(h["times"][-len(values):], values, strict=True):
                        if name in _SNAPSHOT_LARGEST:
                            line[index[t]] = max(line[index[t]], v)
                        else:
                            line[index[t]] += v
        out[kind] = merged
    return out


def _add_items(have: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
    for key, value in item.items():
        if isinstance(value, list) and isinstance(have.get(key), list):
            have[key] = sorted(set(have[key]) | set(value))
        elif isinstance(value, bool) or key not in have:
            have[key] = have.get(key) or value
        elif isinstance(value, int | float):
            if key in _SNAPSHOT_LARGEST:
                have[key] = max(have[key], value)
            else:
                have[key] = have[key] + value
    return have
