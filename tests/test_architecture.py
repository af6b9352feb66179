"""The package layers of docs/ARCHITECTURE.md, checked against the imports the code really makes.

Every `import` counts, at module level or inside a function, `TYPE_CHECKING` blocks included: a lazy import
changes when a module is loaded, not what it depends on."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "statekit"
DOC = ROOT / "docs" / "ARCHITECTURE.md"
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> Iterator[tuple[str, int]]:
    """The statekit modules `name` imports, with the line of each import."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield from _resolve(alias.name, (), node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            yield from _resolve(module, [a.name for a in node.names], node.lineno)


def _resolve(module: str, names: object, line: int) -> Iterator[tuple[str, int]]:
    if module != "statekit" and not module.startswith("statekit."):
        return
    found = False
    for attr in names if isinstance(names, list) else []:
        if f"{module}.{attr}" in MODULES:
            found = True
            yield f"{module}.{attr}", line
    if not found:
        while module not in MODULES and "." in module:
            module = module.rpartition(".")[0]
        yield module, line


GRAPH: dict[str, dict[str, int]] = {}
for _name, _path in MODULES.items():
    GRAPH[_name] = {}
    for _target, _line in _imports(_name, _path):
        if _target != _name:
            GRAPH[_name].setdefault(_target, _line)


def _layers() -> dict[str, tuple[int, frozenset[str]]]:
    """From the doc's table: package -> (layer, the packages it may import besides lower layers' ...)."""
    rows: dict[str, tuple[int, frozenset[str]]] = {}
    row = re.compile(r"^\|\s*(\d+)\s*\|\s*`([\w.]+)`\s*\|[^|]*\|\s*([^|]*)\|\s*$")
    for line in DOC.read_text(encoding="utf-8").splitlines():
        m = row.match(line)
        if m:
            allowed = frozenset(re.findall(r"`([\w.]+)`", m.group(3)))
            rows[m.group(2)] = (int(m.group(1)), allowed)
    return rows


LAYERS = _layers()


def _package_of(module: str) -> str:
    best = ""
    for pkg in LAYERS:
        inside = module == pkg or (pkg != "statekit" and module.startswith(pkg + "."))
        if inside and len(pkg) > len(best):
            best = pkg
    return best


def test_the_doc_table_names_every_module() -> None:
    assert LAYERS, f"no package table found in {DOC}"
    unplaced = sorted(m for m in MODULES if not _package_of(m))
    assert not unplaced, f"modules in no row of the table in docs/ARCHITECTURE.md: {unplaced}"
    for pkg in LAYERS:
        assert any(m == pkg or m.startswith(pkg + ".") for m in MODULES), f"{pkg} in the table but not in the code"


def _violations(graph: dict[str, dict[str, int]]) -> list[str]:
    bad = []
    for module, targets in graph.items():
        src = _package_of(module)
        for target, line in targets.items():
            dst = _package_of(target)
            if dst == src:
                continue
            if dst not in LAYERS[src][1]:
                bad.append(f"{module}:{line} {src} imports {dst} ({target})")
    return bad


def test_no_import_reaches_outside_what_the_table_allows() -> None:
    bad = _violations(GRAPH)
    assert not bad, "imports the table does not allow:\n" + "\n".join(bad)


def test_the_table_only_allows_lower_layers() -> None:
    for pkg, (layer, allowed) in LAYERS.items():
        for other in allowed:
            assert other in LAYERS, f"{pkg} may import {other}, which has no row"
            assert LAYERS[other][0] < layer, f"{pkg} (layer {layer}) may import {other} (layer {LAYERS[other][0]})"


def _circles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return circles


def test_no_import_circle() -> None:
    circles = _circles(GRAPH)
    assert not circles, f"import circles: {circles}"


def test_no_module_is_over_the_size_limit() -> None:
    big = {
        str(p.relative_to(ROOT)): n
        for p in MODULES.values()
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not big, f"modules over {MAX_LINES} lines: {big}"


def test_the_reader_sees_relative_aliased_and_function_level_imports(tmp_path: Path) -> None:
    """The graph reader understands relative, aliased and function-level imports."""
    src = tmp_path / "mod.py"
    src.write_text("def f():\n    from statekit.cli import _app\n    import statekit.audit.engine as e\n")
    got = {t for t, _ in _imports("statekit.archive.reader", src)}
    assert {"statekit.cli._app", "statekit.audit.engine"} <= got
    rel = tmp_path / "rel.py"
    rel.write_text("from ..errors import StatekitError\nfrom . import writer\n")
    got = {t for t, _ in _imports("statekit.archive.reader", rel)}
    assert "statekit.errors" in got


def test_the_checker_sees_a_planted_circle_and_upward_import() -> None:
    planted = {m: dict(t) for m, t in GRAPH.items()}
    planted["statekit.archive.reader"]["statekit.cli._app"] = 1
    planted["statekit.errors"]["statekit.archive.reader"] = 1
    assert any("statekit.archive imports statekit.cli" in v for v in _violations(planted))
    assert any("statekit.errors" in c and "statekit.archive.reader" in c for c in _circles(planted))
