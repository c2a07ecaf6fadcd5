"""Check the import structure of src/pgusher: packages depend on each other one way only.

usage: python scripts/import_graph.py

Every module under src/pgusher is parsed with ``ast`` (nothing is imported). Its runtime
imports are the ones executed when the module loads: at module level, including inside
module-level ``if``/``try``/``with`` blocks and class bodies, but not under
``if TYPE_CHECKING:`` (type-only; mypy reads those, the interpreter does not). Each import of
pgusher code is mapped to a *node*: the package it falls in (protocol, auth, config, net,
pooling, metrics, admin, workers) or the top-level module (app, cli, log, errors, __init__,
__main__). The graph of nodes is printed, lowest first, and the exit status is 1 when:

- there is a cycle between nodes (imports inside one package do not count);
- a module imports inside a function or method, where an import usually hides a cycle or
  an order problem, except for the few optional third-party modules in ``ALLOWED_IN_FUNCTION``
  imported under ``try: ... except ImportError`` or ``with contextlib.suppress(ImportError)``;
- a package imports app or cli (the composition root and the command line) at runtime, or
  cli at all except from __main__;
- a leaf (errors, log, __init__: what every package may import) imports anything else of
  pgusher;
- a package or top-level module is not one of those named here (a new one must be placed).

tests/unit/test_import_graph.py runs the same check.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "src" / "pgusher"

PACKAGES = ("protocol", "auth", "config", "net", "pooling", "metrics", "admin", "workers")
# Top-level modules every package may import; they import nothing else of pgusher.
LEAVES = ("errors", "log", "__init__")
# Who may import each top-level module at runtime: app is the composition root (only the
# command line starts it), cli is only run by ``python -m pgusher``, startup holds the
# command line's checks, container is the image's entrypoint (python -m).
TOP_IMPORTERS = {"app": {"cli"}, "cli": {"__main__"}, "__main__": set(),
                 "startup": {"cli"}, "container": set()}

# (module, imported name) pairs allowed inside a function. Keep this tiny: each is an
# optional third-party module that may not be installed, so it is imported where it is used,
# under ``try: ... except ImportError`` (or contextlib.suppress(ImportError)); unguarded, the
# import is reported like any other.
ALLOWED_IN_FUNCTION = {
    # uvloop is optional (not on Windows, may be missing): version_text reports it if present,
    # _preload_for_user_switch loads it before root is dropped, _run falls back to asyncio.
    ("pgusher.cli", "uvloop"),
}


@dataclass
class Findings:
    """What the walk found: edges between nodes, with one example import for each."""

    edges: dict[tuple[str, str], str] = field(default_factory=dict)
    nodes: set[str] = field(default_factory=set)
    in_function: list[str] = field(default_factory=list)


def module_name(path: Path, root: Path = ROOT) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def node_of(module: str) -> str:
    """The package or top-level module a ``pgusher...`` module belongs to."""
    parts = module.split(".")
    if len(parts) == 1:
        return "__init__"
    return parts[1]


def _is_type_checking(test: ast.expr) -> bool:
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _names_import_error(node: ast.expr | None) -> bool:
    if isinstance(node, ast.Tuple):
        return any(_names_import_error(item) for item in node.elts)
    name = node.id if isinstance(node, ast.Name) else getattr(node, "attr", None)
    return name in ("ImportError", "ModuleNotFoundError")


def _guards_import(stmt: ast.stmt) -> bool:
    """True for ``try`` catching ImportError and ``with contextlib.suppress(ImportError)``."""
    if isinstance(stmt, ast.Try):
        return any(_names_import_error(h.type) for h in stmt.handlers)
    if isinstance(stmt, ast.With):
        return any(isinstance(item.context_expr, ast.Call)
                   and any(_names_import_error(arg) for arg in item.context_expr.args)
                   for item in stmt.items)
    return False


def _runtime_imports(body: list[ast.stmt], in_function: bool, guarded: bool = False
                     ) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool, bool]]:
    """Yield (import, is inside a function, is guarded against ImportError) for the
    statements run at runtime."""
    for stmt in body:
        if isinstance(stmt, ast.Import | ast.ImportFrom):
            yield stmt, in_function, guarded
        elif isinstance(stmt, ast.If) and _is_type_checking(stmt.test):
            yield from _runtime_imports(stmt.orelse, in_function, guarded)
        elif isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
            yield from _runtime_imports(stmt.body, True)
        elif isinstance(stmt, ast.ClassDef):
            yield from _runtime_imports(stmt.body, in_function)
        else:
            for name in ("body", "orelse", "finalbody", "handlers", "cases"):
                children = getattr(stmt, name, None)
                if not children:
                    continue
                # Only a try's own body (not its handlers or else) is guarded by it.
                inner = guarded or (name == "body" and _guards_import(stmt))
                for child in children:
                    if isinstance(child, ast.ExceptHandler | ast.match_case):
                        yield from _runtime_imports(child.body, in_function, guarded)
                if isinstance(children[0], ast.stmt):
                    yield from _runtime_imports(children, in_function, inner)


def _targets(root: Path, module: str, is_package: bool, stmt: ast.Import | ast.ImportFrom
             ) -> list[str]:
    """The absolute names an import statement loads."""
    if isinstance(stmt, ast.Import):
        return [alias.name for alias in stmt.names]
    if stmt.level == 0:
        base = stmt.module or ""
    else:
        parts = module.split(".")
        if not is_package:
            parts.pop()
        if stmt.level > 1:
            parts = parts[: len(parts) - (stmt.level - 1)]
        base = ".".join(parts + ([stmt.module] if stmt.module else []))
    # ``from . import log`` loads a submodule when there is one by that name.
    out = []
    for alias in stmt.names:
        sub = f"{base}.{alias.name}"
        if _exists(root, sub):
            out.append(sub)
        else:
            out.append(base)
    return out


def _exists(root: Path, module: str) -> bool:
    if module != "pgusher" and not module.startswith("pgusher."):
        return False
    path = root.joinpath(*module.split(".")[1:])
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def scan(root: Path = ROOT) -> Findings:
    found = Findings()
    for path in sorted(root.rglob("*.py")):
        module = module_name(path, root)
        here = node_of(module)
        found.nodes.add(here)
        tree = ast.parse(path.read_text(), filename=str(path))
        for stmt, in_function, guarded in _runtime_imports(tree.body, False):
            where = f"{path.relative_to(root.parent.parent)}:{stmt.lineno}"
            for target in _targets(root, module, path.name == "__init__.py", stmt):
                if in_function and not (guarded and (module, target) in ALLOWED_IN_FUNCTION):
                    found.in_function.append(f"{where}: imports {target} inside a function")
                if target != "pgusher" and not target.startswith("pgusher."):
                    continue
                there = node_of(target)
                if there != here:
                    found.edges.setdefault((here, there), f"{where}: imports {target}")
    return found


def cycles(nodes: set[str], edges: set[tuple[str, str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan's algorithm)."""
    out: dict[str, list[str]] = {n: [] for n in nodes}
    for a, b in edges:
        out[a].append(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    result: list[list[str]] = []

    def visit(n: str) -> None:
        index[n] = low[n] = len(index)
        stack.append(n)
        for m in sorted(out[n]):
            if m not in index:
                visit(m)
                low[n] = min(low[n], low[m])
            elif m in stack:
                low[n] = min(low[n], index[m])
        if low[n] == index[n]:
            group = []
            while True:
                m = stack.pop()
                group.append(m)
                if m == n:
                    break
            if len(group) > 1:
                result.append(sorted(group))

    for n in sorted(nodes):
        if n not in index:
            visit(n)
    return result


def order(nodes: set[str], edges: set[tuple[str, str]]) -> list[str]:
    """Nodes lowest first: each after everything it imports (cycles broken arbitrarily)."""
    done: list[str] = []
    seen: set[str] = set()

    def visit(n: str) -> None:
        if n in seen:
            return
        seen.add(n)
        for a, b in sorted(edges):
            if a == n:
                visit(b)
        done.append(n)

    for n in sorted(nodes, key=lambda n: (n not in LEAVES, n in TOP_IMPORTERS, n)):
        visit(n)
    return done


def problems(found: Findings) -> list[str]:
    edges = set(found.edges)
    out = [f"import cycle between {', '.join(group)}:\n    "
           + "\n    ".join(found.edges[e] for e in sorted(edges)
                           if e[0] in group and e[1] in group)
           for group in cycles(found.nodes, edges)]
    known = set(PACKAGES) | set(LEAVES) | set(TOP_IMPORTERS)
    out += [f"{n} is not in PACKAGES, LEAVES or TOP_IMPORTERS of scripts/import_graph.py"
            for n in sorted(found.nodes - known)]
    out += found.in_function
    for (a, b), example in sorted(found.edges.items()):
        if b in TOP_IMPORTERS and a not in TOP_IMPORTERS[b]:
            out.append(f"{example}: only {sorted(TOP_IMPORTERS[b]) or 'nothing'} may import {b}")
        if a in LEAVES and b not in LEAVES:
            out.append(f"{example}: {a} is a leaf and may import only {', '.join(LEAVES)}")
    return out


def graph_text(found: Findings) -> str:
    edges = set(found.edges)
    lines = []
    for n in order(found.nodes, edges):
        deps = sorted(b for a, b in edges if a == n)
        lines.append(f"{n:10} -> {', '.join(deps) if deps else '(nothing)'}")
    return "\n".join(lines)


def main() -> int:
    found = scan()
    print("pgusher package imports at runtime, lowest first:")
    print(graph_text(found))
    bad = problems(found)
    for problem in bad:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
