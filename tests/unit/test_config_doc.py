"""docs/CONFIG.md is generated from the settings table: it must be current, and name every
key with its default and reload behaviour."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pgusher.config import PGUSHER_TABLE, SETTINGS_TABLE
from pgusher.config.differences import DIFFERENCES

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gen_config_doc.py"


def test_config_doc_is_current() -> None:
    res = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True,
                         text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr


def test_every_key_is_documented() -> None:
    text = (ROOT / "docs" / "CONFIG.md").read_text()
    rows = {line.split("|")[1].strip().strip("`"): line for line in text.splitlines()
            if line.startswith("| `")}
    assert set(rows) == set(SETTINGS_TABLE) | set(PGUSHER_TABLE)
    for name, spec in {**SETTINGS_TABLE, **PGUSHER_TABLE}.items():
        cells = [c.strip() for c in rows[name].split("|")]
        assert cells[4] == ("yes" if spec.reloadable else "restart"), name
    assert set(DIFFERENCES) <= set(SETTINGS_TABLE)
    assert "| `listen_port` | integer | `6432` | restart |" in text


def test_check_fails_when_stale(tmp_path: Path) -> None:
    """The check compares the file with a fresh rendering: one changed byte fails it."""
    doc = ROOT / "docs" / "CONFIG.md"
    original = doc.read_text()
    stale = tmp_path / "scripts"
    stale.mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "src").symlink_to(ROOT / "src")
    (stale / SCRIPT.name).write_text(SCRIPT.read_text())
    (tmp_path / "docs" / "CONFIG.md").write_text(original.replace("6432", "6433", 1))
    res = subprocess.run([sys.executable, str(stale / SCRIPT.name), "--check"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 1
    assert "docs/CONFIG.md is stale" in res.stderr
