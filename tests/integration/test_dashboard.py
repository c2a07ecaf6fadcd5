"""The live dashboard in a real headless Chromium, against a pooler with traffic."""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
import threading
import zlib
from pathlib import Path
from typing import Any

import psycopg
import pytest
from consolecase import start_with_http

from support import PgCluster, PoolerFactory

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
BAR_BLUE = (0x2F, 0x81, 0xF7)
BAR_RED = (0xD1, 0x24, 0x2F)


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
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    proc, base = start_with_http(pooler, pool_size=2)
    stop = threading.Event()
    errors: list[BaseException] = []

    def traffic(app: str, pause: float) -> None:
        try:
            with psycopg.connect(proc.dsn("postgres", application_name=app),
                                 autocommit=True, prepare_threshold=None) as conn:
                while not stop.is_set():
                    conn.execute(f"select pg_sleep({pause})")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=traffic, args=(name, pause)) for name, pause in
               [("checkout", 0.2)] * 4 + [("reports", 0.3)] * 2]
    for t in threads:
        t.start()
    profile = tempfile.mkdtemp(prefix="pgusher-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        driver.get(base + "/")
        wait = WebDriverWait(driver, 20)

        def rows(table: str) -> list[Any]:
            return list(driver.find_elements(By.CSS_SELECTOR, f"#{table} tbody tr"))

        wait.until(lambda _d: rows("pools") and len(rows("by-conn")) >= 2)
        # Data keeps refreshing: wait until clients are seen waiting on the busy pool.
        wait.until(lambda _d: any(int(c.text) > 0 for c in driver.find_elements(
            By.CSS_SELECTOR, "#pools tbody tr td:nth-child(5)")))
        # A second refresh gives the live rates.
        wait.until(lambda _d: driver.find_elements(By.CSS_SELECTOR, "#cards .v")[3].text
                   not in ("", "-"))
        pool_cells = [c.text for c in rows("pools")[0].find_elements(By.TAG_NAME, "td")]
        assert pool_cells[:3] == ["app", "postgres", "transaction"]
        assert pool_cells[5] == "2 / 2"
        apps = [r.find_elements(By.TAG_NAME, "td")[0].text for r in rows("by-conn")]
        assert apps[:2] == ["checkout", "reports"]
        time_apps = [r.find_elements(By.TAG_NAME, "td")[0].text for r in rows("by-time")]
        assert set(time_apps[:2]) == {"checkout", "reports"}
        status = driver.find_element(By.ID, "status").text
        assert status.startswith("pgusher ")
        shot_dir = Path(os.environ.get("PGUSHER_SCREENSHOT_DIR", proc.workdir))
        shot = shot_dir / "dashboard.png"
        driver.save_screenshot(str(shot))
        width, height, pixels = decode_png(shot.read_bytes())
        assert (width, height) == (1400, 1000) or width >= 800
        # The pool's "servers in use" bar is drawn full (red while clients wait, else blue)
        # and so are the application bars: the page shows data, not an empty shell.
        blue, red = count_color(pixels, BAR_BLUE), count_color(pixels, BAR_RED)
        assert blue > 1000 and blue + red > 1500
        assert driver.get_log("browser") == [] or all(
            entry["level"] != "SEVERE" for entry in driver.get_log("browser"))
    finally:
        driver.quit()
        stop.set()
        for t in threads:
            t.join()
        shutil.rmtree(profile, ignore_errors=True)
    assert not errors
