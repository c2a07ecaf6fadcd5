"""Per (database, user, application) counters: the only statistics the data path touches.

Strategy: a client resolves its :class:`Counters` object once, when it logs in, and the data
path then does plain attribute increments on it (no dict lookup, no lock, no call). Everything
else - per-database figures for SHOW STATS, per-user and per-application views, averages over
stats_period, Prometheus output - is derived by summing these objects when someone asks, which
is rare next to the per-message work.

Times are kept in float seconds (as read from the monotonic clock) and converted to whole
microseconds only for display, as PgBouncer shows them.
"""

from __future__ import annotations

# Upper bounds (seconds) of the latency histograms' buckets; one more bucket holds the rest.
# The data path finds a bucket with bisect_left (a value equal to a bound is in its bucket,
# as Prometheus' "le" says).
BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
          10.0, 30.0, 60.0)
HISTOGRAMS = ("query_hist", "xact_hist", "wait_hist")

# The counters that add up across objects, in the order they are summed and snapshotted.
SUMMED = ("xact_count", "query_count", "bytes_in", "bytes_out", "xact_time", "query_time",
          "wait_time", "wait_count", "assign_count", "login_count")


class Counters:
    """Counters of one (database, user, application) triple; also used for sums of them."""

    __slots__ = ("application", "assign_count", "bytes_in", "bytes_out", "clients",
                 "clients_peak", "database", "login_count", "query_count", "query_hist",
                 "query_time", "user", "wait_count", "wait_hist", "wait_max", "wait_time",
                 "xact_count", "xact_hist", "xact_time")

    def __init__(self, database: str = "", user: str = "", application: str = "") -> None:
        self.database = database
        self.user = user
        self.application = application
        self.xact_count = 0
        self.query_count = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.xact_time = 0.0
        self.query_time = 0.0
        self.wait_time = 0.0
        self.wait_count = 0
        self.wait_max = 0.0
        self.assign_count = 0
        self.login_count = 0
        # Observations per bucket of BOUNDS (not cumulative): query batches (from the first
        # message to the ReadyForQuery that ends them), transactions, waits for a server.
        self.query_hist = [0] * (len(BOUNDS) + 1)
        self.xact_hist = [0] * (len(BOUNDS) + 1)
        self.wait_hist = [0] * (len(BOUNDS) + 1)
        # Gauges kept at login and logout (not on the data path).
        self.clients = 0
        self.clients_peak = 0

    def add(self, other: Counters) -> None:
        """Add ``other``'s summed counters into this one (max for wait_max)."""
        for name in SUMMED:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        if other.wait_max > self.wait_max:
            self.wait_max = other.wait_max
        self.clients += other.clients
        for name in HISTOGRAMS:
            mine, theirs = getattr(self, name), getattr(other, name)
            for i, n in enumerate(theirs):
                mine[i] += n

    def snapshot(self) -> tuple[float, ...]:
        return tuple(getattr(self, name) for name in SUMMED)


# Why a client's login failed (the ``reason`` label of the auth failure counter).
AUTH_REASONS = ("password", "no_such_user", "hba", "certificate", "peer", "other")
# The client limits a login can be refused for (the ``limit`` label of the refusal counter).
CLIENT_LIMITS = ("max_client_conn", "max_db_client_connections", "max_user_client_connections")


class Events:
    """Failures and refusals: counted where they happen, which is never per message.

    Tables map a label value to its count. The fixed label sets (reasons, limits) start at
    zero, so that a rate over them exists before the first failure.
    """

    __slots__ = ("auth_failures", "refusals", "server_connect_failures",
                 "server_login_failures", "wait_timeouts")

    def __init__(self) -> None:
        self.auth_failures = dict.fromkeys(AUTH_REASONS, 0)
        self.refusals = dict.fromkeys(CLIENT_LIMITS, 0)
        self.server_connect_failures: dict[str, int] = {}  # per database
        self.server_login_failures: dict[str, int] = {}  # per database
        self.wait_timeouts: dict[str, int] = {}  # per database

    def auth_failed(self, reason: str) -> None:
        key = reason if reason in self.auth_failures else "other"
        self.auth_failures[key] += 1

    def refused(self, limit: str) -> None:
        self.refusals[limit] = self.refusals.get(limit, 0) + 1

    def server_connect_failed(self, database: str) -> None:
        table = self.server_connect_failures
        table[database] = table.get(database, 0) + 1

    def server_login_failed(self, database: str) -> None:
        table = self.server_login_failures
        table[database] = table.get(database, 0) + 1

    def wait_timed_out(self, database: str) -> None:
        table = self.wait_timeouts
        table[database] = table.get(database, 0) + 1


# Absorbs the (never expected) increments of a client that has not logged in yet, so the data
# path needs no None check.
UNCOUNTED = Counters("(nodb)", "(nouser)", "")
