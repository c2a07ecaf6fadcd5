"""The exposition helpers: Accept negotiation, OpenMetrics from 0.0.4, histogram folding."""

from __future__ import annotations

from bisect import bisect_left

from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
from prometheus_client.parser import text_string_to_metric_families

from pgusher.metrics.counters import BOUNDS, Counters, Events
from pgusher.metrics.prometheus import (
    HISTOGRAM_APPLICATIONS,
    family,
    histogram_groups,
    to_openmetrics,
    wants_openmetrics,
)


def test_accept_negotiation() -> None:
    prometheus = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
                  "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
    assert wants_openmetrics(prometheus)
    assert wants_openmetrics("application/openmetrics-text")
    assert wants_openmetrics("Application/OpenMetrics-Text; q=0.9, text/plain; q=0.5")
    assert not wants_openmetrics("")
    assert not wants_openmetrics("*/*")
    assert not wants_openmetrics("text/plain")
    assert not wants_openmetrics("application/openmetrics-text;q=0, text/plain")
    assert not wants_openmetrics("application/openmetrics-text;q=0.2, text/plain;q=0.9")
    assert not wants_openmetrics("application/openmetrics-text;q=bad")


def test_openmetrics_renames_counter_families_only() -> None:
    lines = family("x_requests_total", "counter", "Requests.", [({"a": 'q"\\'}, 3)])
    lines += family("x_open", "gauge", "Open.", [({}, 1.5)])
    lines += family("x_total_gauge_total", "gauge", "A gauge whose name ends in _total.",
                    [({}, 2)])
    text = "\n".join(lines) + "\n"
    om = to_openmetrics(text)
    assert om.endswith("# EOF\n")
    assert "# TYPE x_requests counter" in om and "# HELP x_requests Requests." in om
    assert "# TYPE x_total_gauge_total gauge" in om
    parsed = {f.name: f for f in om_parse(om)}
    assert parsed["x_requests"].samples[0].value == 3
    assert parsed["x_requests"].samples[0].labels == {"a": 'q"\\'}
    assert parsed["x_open"].samples[0].value == 1.5
    classic = {f.name: f for f in text_string_to_metric_families(text)}
    assert classic["x_requests"].samples[0].labels == {"a": 'q"\\'}


def test_buckets_follow_le() -> None:
    # A value equal to a bound is in that bound's bucket; past the last, in +Inf's.
    assert bisect_left(BOUNDS, BOUNDS[0]) == 0
    assert bisect_left(BOUNDS, 0.0) == 0
    assert bisect_left(BOUNDS, BOUNDS[3] + 1e-9) == 4
    assert bisect_left(BOUNDS, 1e9) == len(BOUNDS)


def test_histogram_applications_past_the_cap_fold_into_other() -> None:
    counters = []
    for i in range(HISTOGRAM_APPLICATIONS + 5):
        for user in ("u1", "u2"):
            c = Counters("db", user, f"app{i}")
            c.xact_hist[i % len(c.xact_hist)] += 1
            c.xact_time += 0.5
            counters.append(c)
    counters.append(Counters("other_db", "u1", "app99"))
    groups = histogram_groups(counters)
    names = {app for db, app in groups if db == "db"}
    assert names == {f"app{i}" for i in range(HISTOGRAM_APPLICATIONS)} | {"(other)"}
    assert ("other_db", "app99") in groups  # each database has its own cap
    other = groups[("db", "(other)")]
    assert sum(other.xact_hist) == 5 * 2 and other.xact_time == 5 * 2 * 0.5
    assert sum(groups[("db", "app0")].xact_hist) == 2


def test_events_start_at_zero_and_count() -> None:
    events = Events()
    assert set(events.auth_failures.values()) == {0}
    events.auth_failed("password")
    events.auth_failed("something new")
    events.refused("max_client_conn")
    events.server_connect_failed("db")
    events.server_connect_failed("db")
    events.wait_timed_out("db")
    assert events.auth_failures["password"] == 1 and events.auth_failures["other"] == 1
    assert events.refusals["max_client_conn"] == 1
    assert events.server_connect_failures == {"db": 2}
    assert events.server_login_failures == {}
    assert events.wait_timeouts == {"db": 1}
