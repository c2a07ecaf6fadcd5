"""Latency histograms per database and application, their cap, and OpenMetrics on request."""

from __future__ import annotations

import itertools
import json
import threading
import time
import urllib.request
from collections import defaultdict

import psycopg
from consolecase import http_get, start_with_http
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from test_metrics_failures import promtool_check, samples
from test_workers import WORKERS, start_workers

from support import PgCluster, PoolerFactory

# What Prometheus 2.x sends when it scrapes.
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
                     "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")

HISTOGRAMS = ("pgusher_query_duration_seconds", "pgusher_transaction_duration_seconds",
              "pgusher_client_wait_duration_seconds")


def get(url: str, accept: str | None) -> tuple[str, str]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return resp.headers["Content-Type"], resp.read().decode()


Buckets = dict[tuple[str, str], dict[str, float]]


def histogram(text: str, name: str) -> tuple[Buckets, dict[tuple[str, str], float],
                                             dict[tuple[str, str], float]]:
    """(buckets by le, sums, counts), keyed by (database, application)."""
    buckets: Buckets = defaultdict(dict)
    sums: dict[tuple[str, str], float] = {}
    counts: dict[tuple[str, str], float] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name != name:
            continue
        assert fam.type == "histogram"
        for s in fam.samples:
            key = (s.labels["database"], s.labels["application"])
            if s.name.endswith("_bucket"):
                buckets[key][s.labels["le"]] = s.value
            elif s.name.endswith("_sum"):
                sums[key] = s.value
            else:
                counts[key] = s.value
    for key, by_le in buckets.items():
        values = list(by_le.values())
        assert values == sorted(values), f"{name} {key} buckets are not cumulative"
        assert by_le["+Inf"] == counts[key]
    return buckets, sums, counts


def per_app(got: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str
            ) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for (family, labels), value in got.items():
        if family == name:
            out[dict(labels)["application"]] += value
    return out


def test_histograms_follow_what_each_application_ran(pg: PgCluster, pooler: PoolerFactory
                                                     ) -> None:
    proc, base = start_with_http(pooler, pool_size=1)

    def dsn(app: str) -> str:
        return proc.dsn("postgres", application_name=app)

    # prepare_threshold=None: psycopg's preparing of a repeated query would add a Sync of
    # its own, and with it one more transaction than the test counts.
    def connect(app: str) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(dsn(app), autocommit=True, prepare_threshold=None)

    with connect("fast") as fast:
        for _ in range(30):
            fast.execute("select 1")
    with connect("slow") as slow:
        for _ in range(5):
            slow.execute("select pg_sleep(0.06)")
    with connect("txn") as txn:
        for _ in range(4):
            with txn.transaction():
                txn.execute("select pg_sleep(0.03)")
    # One server only: a client arriving while another sleeps waits for it.
    with connect("holder") as holder, connect("waiter") as waiter:
        sleeper = threading.Thread(target=holder.execute, args=("select pg_sleep(0.4)",))
        sleeper.start()
        time.sleep(0.15)
        waiter.execute("select 1")
        sleeper.join()

    _ctype, text = get(base + "/metrics", None)
    promtool_check(text)
    got = samples(text)
    q_buckets, q_sums, q_counts = histogram(text, "pgusher_query_duration_seconds")
    x_buckets, x_sums, x_counts = histogram(text, "pgusher_transaction_duration_seconds")
    w_buckets, w_sums, w_counts = histogram(text, "pgusher_client_wait_duration_seconds")
    key = ("app", "fast")
    assert q_counts[key] == 30 and x_counts[key] == 30 and q_buckets[key]["0.25"] == 30
    key = ("app", "slow")
    assert q_counts[key] == 5 and q_buckets[key]["0.05"] == 0 and q_buckets[key]["0.5"] == 5
    key = ("app", "txn")  # BEGIN, the select and COMMIT are three queries
    assert q_counts[key] == 12 and x_counts[key] == 4
    assert x_buckets[key]["0.025"] == 0 and x_sums[key] >= 4 * 0.03
    key = ("app", "waiter")
    assert w_counts[key] == 1 and w_buckets[key]["0.1"] == 0 and w_sums[key] >= 0.1
    # Counts and sums agree with the plain counters of the same application.
    xacts = per_app(got, "pgusher_transactions_total")
    xact_seconds = per_app(got, "pgusher_transaction_seconds_total")
    query_seconds = per_app(got, "pgusher_query_seconds_total")
    wait_seconds = per_app(got, "pgusher_client_wait_seconds_total")
    for (db, application), count in x_counts.items():
        assert db == "app"
        assert count == xacts[application]
        assert abs(x_sums[(db, application)] - xact_seconds[application]) < 1e-6
        assert abs(q_sums[(db, application)] - query_seconds[application]) < 1e-6
        assert abs(w_sums[(db, application)] - wait_seconds[application]) < 1e-6
    assert set(w_counts) == set(q_counts) == set(x_counts)


def test_application_label_is_capped(pg: PgCluster, pooler: PoolerFactory) -> None:
    proc, base = start_with_http(pooler, pool_size=2)
    for i in range(25):
        with psycopg.connect(proc.dsn("postgres", application_name=f"many-{i:02d}"),
                             autocommit=True, prepare_threshold=None) as conn:
            conn.execute("select 1")
            conn.execute("select 1")
    _ctype, text = get(base + "/metrics", None)
    promtool_check(text)
    for name in HISTOGRAMS:
        _buckets, _sums, counts = histogram(text, name)
        apps = {application for _db, application in counts}
        assert apps == {f"many-{i:02d}" for i in range(20)} | {"(other)"}, name
    _b, _s, counts = histogram(text, "pgusher_transaction_duration_seconds")
    assert counts[("app", "(other)")] == 5 * 2 and counts[("app", "many-00")] == 2
    # The plain counters keep every name (their own cap is larger).
    assert len(per_app(samples(text), "pgusher_transactions_total")) == 25


def test_openmetrics_when_the_scraper_asks(pg: PgCluster, pooler: PoolerFactory) -> None:
    proc, base = start_with_http(pooler)
    with psycopg.connect(proc.dsn("postgres", application_name="om"), autocommit=True,
                         prepare_threshold=None) as conn:
        for _ in range(3):
            conn.execute("select 1")
    ctype, text = get(base + "/metrics", PROMETHEUS_ACCEPT)
    assert ctype == "application/openmetrics-text; version=1.0.0; charset=utf-8"
    assert text.endswith("\n# EOF\n")
    families = {f.name: f for f in openmetrics_families(text)}  # the strict parser
    assert families["pgusher_transactions"].type == "counter"
    assert families["process_cpu_seconds"].type == "counter"
    assert families["pgusher_query_duration_seconds"].type == "histogram"
    assert families["pgusher_client_connections"].type == "gauge"
    om = {(s.name, tuple(sorted(s.labels.items()))): s.value
          for f in families.values() for s in f.samples}
    labels = (("application", "om"), ("database", "app"))
    assert om[("pgusher_transaction_duration_seconds_count", labels)] == 3
    assert om[("pgusher_transactions_total", (*labels[:2], ("user", "postgres")))] == 3
    # The same figures as the classic text (nothing ran in between, bar process figures).
    _ctype, classic = get(base + "/metrics", "text/plain")
    flat = {k: v for k, v in samples(classic).items() if not k[0].startswith("process_")}
    assert flat == {k: v for k, v in om.items() if not k[0].startswith("process_")}
    for accept in (None, "text/plain;version=0.0.4", "*/*",
                   "application/openmetrics-text;q=0.2,text/plain;q=0.9"):
        ctype, text = get(base + "/metrics", accept)
        assert ctype.startswith("text/plain; version=0.0.4"), accept
        assert "# EOF" not in text
    assert http_get(base + "/metrics")[0] == 200


def test_workers_add_up_histograms_and_history(pg: PgCluster, pooler: PoolerFactory) -> None:
    proc, base = start_workers(pooler, pool_size=4, http=True)
    for _ in range(30):
        with psycopg.connect(proc.dsn("postgres", application_name="wk"), autocommit=True,
                             prepare_threshold=None) as conn:
            conn.execute("select 1")
    # Whichever worker answers, it adds up every worker's buckets.
    for _ in range(4):
        _ctype, text = get(base + "/metrics", PROMETHEUS_ACCEPT)
        counts = {(s.labels["database"], s.labels["application"]): s.value
                  for f in openmetrics_families(text) if f.name ==
                  "pgusher_transaction_duration_seconds"
                  for s in f.samples if s.name.endswith("_count")}
        assert counts[("app", "wk")] == 30
    promtool_check(get(base + "/metrics", None)[1])
    deadline = time.monotonic() + 15
    while True:
        snap = json.loads(http_get(base + "/api/snapshot")[2])
        times = snap["history"]["times"]
        if len(times) >= 2:
            break
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert snap["workers"] == WORKERS
    assert all(b - a == 5 for a, b in itertools.pairwise(times))
    ring = snap["history"]["pools"]["app/postgres"]
    assert all(len(values) == len(times) for values in ring.values())
    assert [d["database"] for d in snap["databases"]] == ["app"]
    assert snap["applications"][0]["databases"] == ["app"]
    assert snap["applications"][0]["users"] == ["postgres"]
