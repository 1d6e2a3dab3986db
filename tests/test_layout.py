"""The layout's one rule that code can check: no import cycles between the project's modules (README,
"Architecture"). Every import counts, including those inside functions: a cycle hidden in a function is still two
modules that know each other. Read with `ast`, so nothing is imported to check it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("harness", "dem", "baselines")


def modules(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """{dotted module name: file} of every module under the packages (a package as its __init__)."""
    found = {}
    for package in packages:
        for file in sorted((root / package).rglob("*.py")):
            parts = file.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file
    return found


def imports(name: str, file: Path, known: set[str]) -> set[str]:
    """The project modules `name` imports: `import a.b`, `from a import b` (b a module or a name in a), relative too."""
    found = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # from . import x / from ..a import x
                package = name.split(".") if file.name == "__init__.py" else name.split(".")[:-1]
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import a.b.c` of a name inside module a.b
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(f"{target}."):  # a package's own __init__
                found.add(target)
    return found


def graph(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    files = modules(root, packages)
    return {name: imports(name, file, set(files)) for name, file in files.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan), as a closed path a → … → a."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                found.append(path_within({v, *component}, edges, v))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def path_within(component: set[str], edges: dict[str, set[str]], start: str) -> list[str]:
    """A shortest cycle through `start` inside its component (breadth first), to name in the failure."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(edges[v] & component):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if w not in previous:
                    previous[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{start} is in a component without a cycle through it")


def test_the_project_has_no_import_cycles():
    found = cycles(graph(ROOT))
    assert not found, "import cycles: " + "; ".join(" → ".join(c) for c in found)


def test_a_cycle_is_found_and_named(tmp_path):
    """The check can fail: two modules that import each other (one inside a function, one relative) are named."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from .. import c\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    (pkg / "d.py").write_text("from pkg.a import thing\nimport pkg.sub.b\n")  # imports the cycle, is not in it
    edges = graph(tmp_path, ("pkg",))
    assert edges["pkg.d"] == {"pkg.a", "pkg.sub.b"}
    assert cycles(edges) == [["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]]


def test_the_stages_and_the_config_schema_stay_apart():
    """The schema imports no stage, and no stage imports the module that validates configs across stages (the
    cycle config ↔ arms ↔ dem/arm came from exactly that)."""
    edges = graph(ROOT)
    assert edges["harness.config"] <= {"harness.errors"}
    importers = {m for m, targets in edges.items() if "harness.validate" in targets}
    assert importers <= {"harness.__main__", "harness.pipeline", "harness.preflight"}, importers
