"""The /metrics page in Prometheus' text exposition format (0.0.4), or OpenMetrics 1.0.

Strategy: written by hand rather than through a client library, because every value is
already at hand in the registry and the scan, and a registry of metric objects would only
copy them. Each family is emitted once with its HELP and TYPE lines, then one sample per
label set; label values are escaped as the format requires. The page is always built (and,
with several workers, merged) as 0.0.4 text; :func:`to_openmetrics` turns it into
OpenMetrics for a scraper that asks for it, which differs only in counter family names
(without ``_total``) and the closing ``# EOF``.

The latency histograms are per database and application. Their applications are the first
:data:`HISTOGRAM_APPLICATIONS` of each database in order of first sight; later ones are
folded into ``(other)``, so a client that makes up application names cannot make the series
grow without bound (each worker chooses its own, so a merged page has at most that many per
worker).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from .. import __version__
from . import process
from .counters import BOUNDS, Counters
from .registry import OTHER_APP
from .snapshot import database_targets, scan

if TYPE_CHECKING:
    from ..app import Application
    from ..pooling.pool import Pool

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"

# Application label values kept per database in the histograms; later names are OTHER_APP.
HISTOGRAM_APPLICATIONS = 20

# Histogram families: name, help, the Counters attributes of the buckets and of the sum.
_HISTOGRAMS = [
    ("pgusher_query_duration_seconds",
     "Time from a client's query (or batch up to Sync) to the ReadyForQuery ending it.",
     "query_hist", "query_time"),
    ("pgusher_transaction_duration_seconds",
     "Time from the start of a transaction on a server to its end.", "xact_hist",
     "xact_time"),
    ("pgusher_client_wait_duration_seconds",
     "Time a client waited for a server connection.", "wait_hist", "wait_time"),
]

Sample = tuple[dict[str, str], float]

# Per (database, user, application): name, type, help, how to read the value.
_APP_FAMILIES: list[tuple[str, str, str, str]] = [
    ("pgusher_client_connections", "gauge", "Client connections logged in now.", "clients"),
    ("pgusher_client_connections_peak", "gauge",
     "Most client connections logged in at once since start.", "clients_peak"),
    ("pgusher_client_logins_total", "counter", "Client logins since start.", "login_count"),
    ("pgusher_transactions_total", "counter", "Transactions pooled.", "xact_count"),
    ("pgusher_queries_total", "counter",
     "Queries pooled (one per ReadyForQuery the server sent).", "query_count"),
    ("pgusher_received_bytes_total", "counter", "Bytes received from clients.", "bytes_in"),
    ("pgusher_sent_bytes_total", "counter", "Bytes sent to clients.", "bytes_out"),
    ("pgusher_server_assignments_total", "counter",
     "Times a server connection was linked to a client.", "assign_count"),
    ("pgusher_client_wait_seconds_total", "counter",
     "Time clients spent waiting for a server connection.", "wait_time"),
    ("pgusher_client_wait_seconds_max", "gauge",
     "Longest single wait for a server connection since start.", "wait_max"),
    ("pgusher_transaction_seconds_total", "counter",
     "Time spent in transactions on server connections.", "xact_time"),
    ("pgusher_query_seconds_total", "counter",
     "Time spent running queries on server connections.", "query_time"),
]


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def family(name: str, kind: str, help_text: str, samples: Iterable[Sample]) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    for labels, value in samples:
        if labels:
            text = ",".join(f'{k}="{escape(v)}"' for k, v in labels.items())
            lines.append(f"{name}{{{text}}} {_number(value)}")
        else:
            lines.append(f"{name} {_number(value)}")
    return lines


def _app_labels(c: Counters) -> dict[str, str]:
    return {"database": c.database, "user": c.user, "application": c.application}


def render(app: Application) -> str:
    registry = app.metrics.registry
    result = scan(app)
    counters = sorted(registry.counters.values(),
                      key=lambda c: (c.database, c.user, c.application))
    lines: list[str] = []
    lines += family("pgusher_info", "gauge", "Version of this pgusher process.",
                    [({"version": __version__}, 1)])
    lines += family("pgusher_paused", "gauge", "1 while the whole pooler is paused.",
                    [({}, 1 if app.paused else 0)])
    for name, kind, help_text, attr in _APP_FAMILIES:
        lines += family(name, kind, help_text,
                        [(_app_labels(c), getattr(c, attr)) for c in counters])
    live = result.live
    lines += family("pgusher_client_waiting_connections", "gauge",
                    "Clients waiting for a server connection now.",
                    [(_app_labels(c), live[c].waiting if c in live else 0) for c in counters])
    lines += family("pgusher_server_connections_held", "gauge",
                    "Server connections linked to these clients now.",
                    [(_app_labels(c), live[c].held if c in live else 0) for c in counters])
    pools = sorted(result.pools.items(), key=lambda item: (item[0].db_name, item[0].user))
    pool_families = [
        ("pgusher_pool_client_active_connections", "Clients logged in and not waiting.",
         "cl_active"),
        ("pgusher_pool_client_waiting_connections", "Clients waiting for a server.",
         "cl_waiting"),
        ("pgusher_pool_server_active_connections", "Server connections linked to a client.",
         "sv_active"),
        ("pgusher_pool_server_idle_connections", "Server connections idle in the pool.",
         "sv_idle"),
        ("pgusher_pool_server_used_connections",
         "Idle server connections due for server_check_query.", "sv_used"),
        ("pgusher_pool_server_testing_connections",
         "Server connections running the reset or check query.", "sv_tested"),
        ("pgusher_pool_server_login_connections", "Server connections logging in.", "sv_login"),
    ]
    for name, help_text, attr in pool_families:
        lines += family(name, "gauge", help_text,
                        [({"database": p.db_name, "user": p.user}, getattr(f, attr))
                         for p, f in pools])
    lines += family("pgusher_pool_client_pinned_connections", "gauge",
                    "Clients that keep their server while state that cannot move exists "
                    "(reason: temporary object, session advisory lock, WITH HOLD cursor).",
                    [({"database": p.db_name, "user": p.user, "reason": reason}, count)
                     for p, f in pools for reason, count in sorted(f.pinned.items())])
    lines += family("pgusher_pool_maxwait_seconds", "gauge",
                    "How long the oldest waiting client has waited.",
                    [({"database": p.db_name, "user": p.user}, f.maxwait) for p, f in pools])
    lines += family("pgusher_pool_size", "gauge",
                    "Server connections the pool may open now (pool_size, plus the reserve "
                    "while in use).",
                    [({"database": p.db_name, "user": p.user}, p.limit) for p, _ in pools])
    lines += _histogram_lines(counters)
    lines += _database_lines(app, (p for p, _ in pools))
    lines += _event_lines(app)
    lines += _fleet_lines(app)
    settings = app.config.settings
    lines += family("pgusher_config_max_client_connections", "gauge",
                    "max_client_conn: client connections the pooler accepts.",
                    [({}, settings.max_client_conn)])
    lines += family("pgusher_config_max_user_connections", "gauge",
                    "max_user_connections: server connections per user; 0 = unlimited.",
                    [({}, settings.max_user_connections)])
    for name, kind, help_text, value in process.read():
        lines += family(name, kind, help_text, [({}, value)])
    return "\n".join(lines) + "\n"


def histogram_groups(counters: Iterable[Counters]) -> dict[tuple[str, str], Counters]:
    """Counters summed per (database, application), applications past the cap folded."""
    kept: dict[str, set[str]] = {}
    groups: dict[tuple[str, str], Counters] = {}
    for c in counters:
        names = kept.setdefault(c.database, set())
        application = c.application
        if application not in names:
            if len(names) < HISTOGRAM_APPLICATIONS:
                names.add(application)
            else:
                application = OTHER_APP
        key = (c.database, application)
        total = groups.get(key)
        if total is None:
            total = groups[key] = Counters(c.database, "", application)
        total.add(c)
    return groups


def _histogram_lines(counters: list[Counters]) -> list[str]:
    # Order of first sight decides which applications keep their names: registry order.
    groups = sorted(histogram_groups(counters).items())
    bounds = [repr(b) for b in BOUNDS] + ["+Inf"]
    lines: list[str] = []
    for name, help_text, buckets, total in _HISTOGRAMS:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        for (database, application), c in groups:
            labels = f'database="{escape(database)}",application="{escape(application)}"'
            running = 0
            for bound, n in zip(bounds, getattr(c, buckets), strict=True):
                running += n
                lines.append(f'{name}_bucket{{{labels},le="{bound}"}} {running}')
            lines.append(f"{name}_sum{{{labels}}} {_number(getattr(c, total))}")
            lines.append(f"{name}_count{{{labels}}} {running}")
    return lines


def to_openmetrics(text: str) -> str:
    """This module's 0.0.4 text as OpenMetrics 1.0: counter families are named without
    ``_total`` in their metadata (their samples keep it), and the page ends with ``# EOF``."""
    counters = {line.split(" ")[2] for line in text.splitlines()
                if line.startswith("# TYPE ") and line.endswith(" counter")}
    out: list[str] = []
    for line in text.splitlines():
        if line.startswith(("# HELP ", "# TYPE ")):
            head, name, rest = _meta(line)
            if name in counters and name.endswith("_total"):
                line = f"# {head} {name[:-6]} {rest}"
        out.append(line)
    out.append("# EOF")
    return "\n".join(out) + "\n"


def _meta(line: str) -> tuple[str, str, str]:
    _hash, head, name, rest = line.split(" ", 3)
    return head, name, rest


def wants_openmetrics(accept: str) -> bool:
    """Whether an Accept header prefers OpenMetrics to the 0.0.4 text (by its q values)."""
    best_om = best_text = 0.0
    for part in accept.split(","):
        fields = [f.strip() for f in part.split(";")]
        media = fields[0].lower()
        q = 1.0
        for f in fields[1:]:
            if f.lower().startswith("q="):
                try:
                    q = float(f[2:])
                except ValueError:
                    q = 0.0
        if media == "application/openmetrics-text":
            best_om = max(best_om, q)
        elif media in ("text/plain", "text/*", "*/*"):
            best_text = max(best_text, q)
    return best_om > 0 and best_om >= best_text


def _database_lines(app: Application, pools: Iterable[Pool]) -> list[str]:
    """Per database: every configured one (used or not yet) and every one with a pool."""
    databases = database_targets(app, pools)
    settings = app.config.settings
    default_size = settings.default_pool_size
    lines = family("pgusher_database_server_connections", "gauge",
                   "Server connections open to the database, across its pools.",
                   [({"database": n}, app.db_server_count(n)) for n, _ in databases])
    lines += family("pgusher_database_max_connections", "gauge",
                    "max_db_connections in effect for the database; 0 = unlimited.",
                    [({"database": n}, app.effective_max_db_connections(t))
                     for n, t in databases])
    lines += family("pgusher_database_pool_size", "gauge",
                    "pool_size configured for the database (default_pool_size if unset).",
                    [({"database": n}, t.entry.pool_size if t.entry.pool_size is not None
                      else default_size) for n, t in databases])
    lines += family("pgusher_database_reserve_pool_size", "gauge",
                    "reserve_pool_size configured for the database.",
                    [({"database": n}, t.entry.reserve_pool_size
                      if t.entry.reserve_pool_size is not None else settings.reserve_pool_size)
                     for n, t in databases])
    lines += family("pgusher_database_clients", "gauge",
                    "Client connections logged in to the database now.",
                    [({"database": n}, app.client_counts.db.get(n, 0)) for n, _ in databases])
    lines += family("pgusher_database_paused", "gauge",
                    "1 while the database is paused (PAUSE of it or of the whole pooler).",
                    [({"database": n}, 1 if app.paused or n in app.paused_dbs else 0)
                     for n, _ in databases])
    lines += family("pgusher_database_disabled", "gauge",
                    "1 while the database refuses new clients (DISABLE).",
                    [({"database": n}, 1 if n in app.disabled_dbs else 0)
                     for n, _ in databases])
    return lines


def _event_lines(app: Application) -> list[str]:
    events = app.metrics.events
    lines = family("pgusher_client_auth_failures_total", "counter",
                   "Client logins refused by authentication, by reason.",
                   [({"reason": r}, n) for r, n in sorted(events.auth_failures.items())])
    lines += family("pgusher_client_refusals_total", "counter",
                    "Client logins refused because a client limit was reached, by limit.",
                    [({"limit": k}, n) for k, n in sorted(events.refusals.items())])
    lines += family("pgusher_server_connect_failures_total", "counter",
                    "Server connections that could not be opened (refused, unreachable, "
                    "timed out, TLS).",
                    [({"database": d}, n)
                     for d, n in sorted(events.server_connect_failures.items())])
    lines += family("pgusher_server_login_failures_total", "counter",
                    "Server connections opened whose login failed (authentication, unknown "
                    "database, connect_query, server_connect_timeout, closed during login).",
                    [({"database": d}, n)
                     for d, n in sorted(events.server_login_failures.items())])
    lines += family("pgusher_query_wait_timeouts_total", "counter",
                    "Clients disconnected after waiting query_wait_timeout for a server.",
                    [({"database": d}, n) for d, n in sorted(events.wait_timeouts.items())])
    return lines


# The fleet (net/fleet.py), per database: this member's own figures, and the fleet as this
# member last read its claims. Empty families when the process is in no fleet.
_FLEET_FAMILIES: list[tuple[str, str]] = [
    ("pgusher_fleet_budget_connections",
     "fleet_max_db_connections: server connections the whole fleet may hold."),
    ("pgusher_fleet_members", "Members of the fleet with a live claim, this one included."),
    ("pgusher_fleet_demand_connections",
     "This member's demand: servers in use plus clients waiting (at most its pool sizes)."),
    ("pgusher_fleet_share_connections", "This member's max-min fair share of the budget."),
    ("pgusher_fleet_grant_connections", "Server connections this member may hold now."),
    ("pgusher_fleet_live_connections", "Server connections this member holds now."),
    ("pgusher_fleet_granted_connections",
     "Grants of the whole fleet added up (the others' as last read)."),
    ("pgusher_fleet_heartbeat_age_seconds", "Seconds since this member last wrote its claim."),
]


def _fleet_lines(app: Application) -> list[str]:
    fleet = app.fleet
    members = sorted(fleet.databases.items()) if fleet is not None else []
    values: dict[str, list[Sample]] = {name: [] for name, _ in _FLEET_FAMILIES}
    now = app.loop.time()
    for database, m in members:
        labels = {"database": database}
        figures = [app.config.pgusher.fleet_max_db_connections, 1 + len(m.members), m.demand,
                   m.share, m.grant, m.live(), m.grant + sum(o.granted for o in m.members),
                   round(now - m.last_write, 3) if m.last_write else -1]
        for (name, _), value in zip(_FLEET_FAMILIES, figures, strict=True):
            values[name].append((labels, value))
    lines: list[str] = []
    for name, help_text in _FLEET_FAMILIES:
        lines += family(name, "gauge", help_text, values[name])
    return lines
