"""The live dashboard in a real headless Chromium, against a pooler with traffic.

The screenshots are kept as test artefacts: test-artifacts/dashboard.png (1920 pixels wide)
and dashboard-narrow.png (1000) at the top of the repository, or in $PGUSHER_ARTIFACTS.
"""

from __future__ import annotations

import itertools
import os
import shutil
import struct
import tempfile
import threading
import time
import zlib
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from consolecase import console, http_get, start_with_http

from support import PgCluster, PoolerFactory

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
BAR_BLUE = (0x2F, 0x81, 0xF7)
BAR_RED = (0xD1, 0x24, 0x2F)
ARTIFACTS = Path(os.environ.get("PGUSHER_ARTIFACTS",
                                Path(__file__).resolve().parents[2] / "test-artifacts"))
ZONE = "Europe/Paris"  # the browser's zone: the page must show it, with its offset

# The page is rebuilt every two seconds: everything is read in one script, at one instant.
# A cell with badges reads as their texts joined by "|".
READ_PAGE = """
const out = {};
for (const id of ["databases", "pools", "applications"]) {
  out[id] = [...document.querySelectorAll("#" + id + " tbody tr")].map(tr =>
    [...tr.children].map(td => {
      const b = td.querySelectorAll(".badge");
      return b.length ? [...b].map(x => x.textContent).join("|") : td.textContent;
    }));
}
out.points = Math.max(0, ...[...document.querySelectorAll("#pools svg polyline.a")].map(
  l => l.getAttribute("points").split(" ").length));
out.clock = document.getElementById("clock").textContent;
out.cards = [...document.querySelectorAll("#cards .k")].map(k => k.textContent);
return out;
"""


def decode_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGBA/RGB bytes) of an 8-bit, non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, channels = 8, b"", 0, 0, 4
    while pos < len(data):
        length, kind = struct.unpack_from("!I4s", data, pos)
        chunk = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack_from("!IIBB", chunk)
            assert depth == 8 and color in (2, 6)
            channels = 4 if color == 6 else 3
        elif kind == b"IDAT":
            idat += chunk
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        ftype = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = prev[i]
            corner = prev[i - channels] if i >= channels else 0
            if ftype == 1:
                line[i] = (line[i] + left) & 0xFF
            elif ftype == 2:
                line[i] = (line[i] + up) & 0xFF
            elif ftype == 3:
                line[i] = (line[i] + ((left + up) >> 1)) & 0xFF
            elif ftype == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                pred = left if pa <= pb and pa <= pc else (up if pb <= pc else corner)
                line[i] = (line[i] + pred) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, height, [bytes(r) for r in rows] if channels == 4 else rows


def count_color(rows: list[bytes], rgb: tuple[int, int, int], channels: int = 4) -> int:
    n = 0
    for row in rows:
        for i in range(0, len(row) - channels + 1, channels):
            if abs(row[i] - rgb[0]) < 8 and abs(row[i + 1] - rgb[1]) < 8 and \
                    abs(row[i + 2] - rgb[2]) < 8:
                n += 1
    return n



@pytest.mark.skipif(not (os.access(CHROMIUM, os.X_OK) and os.access(DRIVER, os.X_OK)),
                    reason="chromium and chromium-driver are not installed (scripts/setup)")
def test_dashboard_renders_live_data(pg: PgCluster, pooler: PoolerFactory) -> None:
    import json

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    server = f"host={pg.host} port={pg.port} dbname=app"
    databases = {"app": server, "batch": server, "archive": server, "legacy": server}
    proc, base = start_with_http(pooler, pool_size=2, databases=databases)
    stop = threading.Event()
    errors: list[BaseException] = []

    def traffic(app: str, db: str, pause: float) -> None:
        try:
            with psycopg.connect(proc.dsn("postgres", dbname=db, application_name=app),
                                 autocommit=True, prepare_threshold=None) as conn:
                while not stop.is_set():
                    conn.execute(f"select pg_sleep({pause})")
        except BaseException as exc:
            errors.append(exc)

    # checkout and reports share the app pool (2 servers for 6 clients: some wait); nightly
    # works on batch, which is paused below; archive is never used; legacy is disabled.
    threads = [threading.Thread(target=traffic, args=args) for args in
               [("checkout", "app", 0.2)] * 4 + [("reports", "app", 0.3)] * 2
               + [("nightly", "batch", 0.1)]]
    for t in threads:
        t.start()
    profile = tempfile.mkdtemp(prefix="pgusher-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                 "--window-size=1920,1080"):
        options.add_argument(flag)
    service = Service(DRIVER, env={**os.environ, "TZ": ZONE})
    driver = webdriver.Chrome(service=service, options=options)
    admin = console(proc)
    try:
        # Let batch be used, then pause it; disable legacy.
        deadline = time.monotonic() + 10
        while not any(p["database"] == "batch"
                      for p in json.loads(http_get(base + "/api/snapshot")[2])["pools"]):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        admin.execute("PAUSE batch")
        admin.execute("DISABLE legacy")
        driver.get(base + "/")
        wait = WebDriverWait(driver, 30)

        def page() -> dict[str, Any]:
            found: dict[str, Any] = driver.execute_script(READ_PAGE)
            for name in ("databases", "pools", "applications"):
                found[name] = {row[0]: row for row in found[name]}
            return found

        def ready(_driver: Any) -> bool:
            now = page()
            # Clients are seen waiting on the busy pool, the history has grown to three
            # stored points (five seconds apart) plus the live one, and rates are shown.
            return (len(now["pools"]) == 2 and len(now["applications"]) == 3
                    and int(now["pools"]["app"][5]) > 0 and now["points"] >= 4
                    and now["applications"]["checkout"][7] not in ("", "-"))

        wait.until(ready)
        seen = page()
        dbs = seen["databases"]
        assert list(dbs) == ["app", "archive", "batch", "legacy"]
        assert dbs["app"][1] == "active" and dbs["batch"][1] == "PAUSED"
        assert dbs["legacy"][1] == "DISABLED|not used yet"
        assert dbs["archive"][1] == "not used yet" and dbs["archive"][3] == "0"
        assert dbs["app"][3] == "6" and dbs["app"][4] == "2 / \u221e"
        pools = seen["pools"]
        assert pools["app"][:3] == ["app", "postgres", "transaction"]
        assert pools["app"][6] == "2 / 2"
        assert pools["batch"][3] == "PAUSED" and pools["app"][3] == ""
        apps = seen["applications"]
        assert list(apps)[:2] == ["checkout", "reports"]
        assert apps["checkout"][1:4] == ["app", "postgres", "4"]
        assert apps["nightly"][1:3] == ["batch", "postgres"]
        assert float(apps["checkout"][7]) > 0
        # The clock: date, time and zone, in the browser's zone, close to now.
        clock = seen["clock"]
        now = datetime.now(ZoneInfo(ZONE))
        assert clock.endswith(f" {now.strftime('%z')[:3]}:{now.strftime('%z')[3:]} {ZONE}")
        shown = datetime.strptime(clock[:19], "%Y-%m-%d %H:%M:%S").replace(tzinfo=ZoneInfo(ZONE))
        assert abs((now - shown).total_seconds()) < 10
        cards = seen["cards"]
        assert "failed logins" in cards and "query_wait_timeout" in cards
        # The width is used: databases and pools on the left, applications beside them,
        # together reaching across the window, with nothing to scroll sideways.
        width = driver.execute_script("return window.innerWidth")
        box = {name: driver.find_element(By.ID, f"{name}-panel").rect
               for name in ("databases", "pools", "applications")}
        assert box["applications"]["x"] > box["pools"]["x"] + box["pools"]["width"] - 1
        assert box["applications"]["y"] == box["databases"]["y"]
        assert box["applications"]["x"] + box["applications"]["width"] > 0.95 * width
        assert box["pools"]["width"] > 0.4 * width
        assert driver.execute_script(
            "return document.documentElement.scrollWidth") <= width
        overflow = driver.execute_script(
            "return [...document.querySelectorAll('.panel')].map(p => [p.id, p.scrollWidth,"
            " p.clientWidth]).filter(([id, s, c]) => s > c)")
        assert overflow == []
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "dashboard.png"
        driver.save_screenshot(str(shot))
        png_width, _height, pixels = decode_png(shot.read_bytes())
        assert png_width >= 1800
        # The busy pool's "servers in use" bar is drawn full, red as clients wait, and the
        # sparklines are drawn: the page shows data, not an empty shell.
        blue, red = count_color(pixels, BAR_BLUE), count_color(pixels, BAR_RED)
        assert red > 200 and blue > 20
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert severe == []
        # A narrow window stacks the panels, each as wide as the page.
        driver.set_window_size(1000, 1000)
        wait.until(lambda _d: driver.execute_script("return window.innerWidth") < 1200)
        box = {name: driver.find_element(By.ID, f"{name}-panel").rect
               for name in ("databases", "pools", "applications")}
        assert box["databases"]["y"] < box["pools"]["y"] < box["applications"]["y"]
        assert abs(box["applications"]["width"] - box["databases"]["width"]) < 2
        assert driver.execute_script(
            "return document.documentElement.scrollWidth <= window.innerWidth")
        driver.save_screenshot(str(ARTIFACTS / "dashboard-narrow.png"))
        snap = json.loads(http_get(base + "/api/snapshot")[2])
        times = snap["history"]["times"]
        assert len(times) >= 3 and all(b - a == 5 for a, b in itertools.pairwise(times))
        assert len(snap["history"]["pools"]["app/postgres"]["cl_waiting"]) == len(times)
    finally:
        admin.execute("RESUME")
        admin.close()
        driver.quit()
        stop.set()
        for t in threads:
            t.join()
        shutil.rmtree(profile, ignore_errors=True)
    assert not errors
