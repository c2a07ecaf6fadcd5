"""scripts/import_graph.py: pgusher's packages import each other one way, none inside functions.

The first two tests check the real tree; the others check that the script sees each kind of
problem in small trees written for the purpose.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "import_graph.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("import_graph", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up while it loads
    spec.loader.exec_module(module)
    return module


graph = _load()


def test_pgusher_has_no_import_problems() -> None:
    found = graph.scan()
    assert graph.problems(found) == []
    # The composition root sits on top; the leaves import nothing of pgusher.
    assert ("app", "admin") in found.edges
    assert not [edge for edge in found.edges if edge[0] in graph.LEAVES]


def test_script_prints_the_graph_and_exits_zero() -> None:
    res = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                         timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert any(line.startswith("app ") for line in lines)
    # The two entry points (the command line, the container's entrypoint) come last.
    assert {line.split()[0] for line in lines[-2:]} == {"__main__", "container"}


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "src" / "pgusher"
    for name, text in {"__init__.py": "", **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def _problems(tmp_path: Path, files: dict[str, str]) -> list[str]:
    return list(graph.problems(graph.scan(_tree(tmp_path, files))))


def test_a_cycle_between_packages(tmp_path: Path) -> None:
    found = _problems(tmp_path, {
        "net/__init__.py": "from ..pooling import pool\n",
        "pooling/__init__.py": "",
        "pooling/pool.py": "from ..net import x\n",
        "net/x.py": "",
    })
    assert len(found) == 1
    assert found[0].startswith("import cycle between net, pooling")


def test_imports_inside_one_package_are_not_a_cycle(tmp_path: Path) -> None:
    assert _problems(tmp_path, {
        "net/__init__.py": "",
        "net/a.py": "from . import b\n",
        "net/b.py": "from .a import x\n",
    }) == []


def test_type_checking_imports_do_not_count(tmp_path: Path) -> None:
    assert _problems(tmp_path, {
        "net/__init__.py": """\
            from typing import TYPE_CHECKING
            from ..pooling import pool
            if TYPE_CHECKING:
                from ..app import Application
            """,
        "pooling/__init__.py": "",
        "pooling/pool.py": """\
            import typing
            if typing.TYPE_CHECKING:
                from ..net import x
            """,
        "net/x.py": "",
        "app.py": "",
    }) == []


def test_an_import_inside_a_function(tmp_path: Path) -> None:
    found = _problems(tmp_path, {
        "net/__init__.py": """\
            class C:
                async def m(self) -> None:
                    import json
            """,
    })
    assert found == ["src/pgusher/net/__init__.py:3: imports json inside a function"]


def test_optional_module_only_where_allowed_and_guarded(tmp_path: Path) -> None:
    found = _problems(tmp_path, {
        "cli.py": """\
            import contextlib
            def run() -> None:
                try:
                    import uvloop
                except ImportError:
                    pass
                with contextlib.suppress(ImportError):
                    import uvloop
            def unguarded() -> None:
                import uvloop
            """,
        "net/__init__.py": """\
            def run() -> None:
                try:
                    import uvloop
                except ImportError:
                    pass
            """,
    })
    assert found == ["src/pgusher/cli.py:10: imports uvloop inside a function",
                     "src/pgusher/net/__init__.py:3: imports uvloop inside a function"]


def test_packages_may_not_import_app_or_cli(tmp_path: Path) -> None:
    found = _problems(tmp_path, {
        "app.py": "from .net import x\n",
        "cli.py": "from .app import Application\n",
        "__main__.py": "from .cli import main\n",
        "net/__init__.py": "",
        "net/x.py": "",
        "admin/__init__.py": "from .. import app\n",
    })
    assert found == [
        "src/pgusher/admin/__init__.py:1: imports pgusher.app: only ['cli'] may import app"]


@pytest.mark.parametrize(("files", "problem"), [
    ({"log.py": "from .config import x\n", "config/__init__.py": "", "config/x.py": ""},
     "src/pgusher/log.py:1: imports pgusher.config.x: log is a leaf and may import only "
     "errors, log, __init__"),
    ({"extra.py": ""}, "extra is not in PACKAGES, LEAVES or TOP_IMPORTERS of "
     "scripts/import_graph.py"),
])
def test_leaves_and_unknown_modules(tmp_path: Path, files: dict[str, str], problem: str) -> None:
    assert _problems(tmp_path, files) == [problem]
