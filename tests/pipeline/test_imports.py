"""The project's modules must not import each other in a circle.

The import graph is read with `ast` (no module is imported, so this needs neither TensorFlow nor
time): every `import` / `from ... import` statement counts, at module level or inside a function,
class or `if`, since a cycle through a lazy import still ties the modules together (and turns into
an ImportError the day someone moves that import to the top). `if TYPE_CHECKING:` blocks do not
run and are left out; so are dynamic `importlib.import_module("...")` calls (the registries'
"module:ATTR" strings).

Run it as a script to print the cycles instead of asserting:

    .venv/bin/python tests/pipeline/test_imports.py [PACKAGE ...]
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pipeline", "components", "models", "data")


def module_files(packages=PACKAGES, root: Path = PROJECT_ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under the packages (a package is its __init__)."""
    out = {}
    for pkg in packages:
        for f in sorted((root / pkg).rglob("*.py")):
            parts = list(f.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = f
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    """Every Import/ImportFrom node, at any depth, outside `if TYPE_CHECKING:` bodies."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _resolve(name: str, modules: dict) -> str | None:
    """The longest prefix of dotted NAME that is a project module (`import a.b.c` runs a.b.c)."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        cand = ".".join(parts[:i])
        if cand in modules:
            return cand
    return None


def import_graph(modules: dict[str, Path]) -> dict[str, dict[str, int]]:
    """module -> {imported project module: line of the first such import}."""
    graph: dict[str, dict[str, int]] = {}
    for mod, path in modules.items():
        is_pkg = path.name == "__init__.py"
        edges: dict[str, int] = {}
        for node in _import_nodes(ast.parse(path.read_text(), filename=str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                if node.module == "__future__":
                    continue
                if node.level:  # relative: from the module's package, one level up per extra dot
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module
                for a in node.names:
                    # `from pkg import sub` imports the submodule pkg.sub when there is one,
                    # otherwise a name defined in pkg/__init__.py
                    sub = f"{source}.{a.name}"
                    targets.append(sub if sub in modules else source)
            for t in targets:
                r = _resolve(t, modules)
                if r is not None and r != mod:
                    edges.setdefault(r, node.lineno)
        graph[mod] = edges
    return graph


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative): the components with more than one module, sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            advanced = False
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, {})))))
                    advanced = True
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return sorted(out)


def shortest_cycle(graph: dict[str, dict[str, int]], start: str, within: set[str]) -> list[str]:
    """A shortest import path start -> ... -> start inside one strongly connected component."""
    prev = {start: None}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v]):
            if w not in within:
                continue
            if w == start:
                path = []
                while v is not None:
                    path.append(v)
                    v = prev[v]
                return path[::-1] + [start]
            if w not in prev:
                prev[w] = v
                queue.append(w)
    return []


def describe(graph, modules, comp: list[str]) -> str:
    """The component's modules and a shortest cycle through each of them (file:line -> file)."""
    lines, seen = [], set()
    for m in comp:
        cyc = shortest_cycle(graph, m, set(comp))
        key = frozenset(zip(cyc, cyc[1:]))
        if key in seen:
            continue
        seen.add(key)
        lines.append("  " + " -> ".join(f"{modules[a].relative_to(PROJECT_ROOT)}:{graph[a][b]}"
                                        for a, b in zip(cyc, cyc[1:])) + f" -> {modules[cyc[-1]].relative_to(PROJECT_ROOT)}")
    return " <-> ".join(comp) + "\n" + "\n".join(lines)


def cycles(packages=PACKAGES) -> list[str]:
    modules = module_files(packages)
    graph = import_graph(modules)
    return [describe(graph, modules, c) for c in strongly_connected(graph)]


def test_graph_reader_sees_lazy_relative_and_submodule_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .c import thing\n")
    (pkg / "a.py").write_text("import os\n\ndef f():\n    from pkg import b\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.a\n"
                              "from pkg.sub import thing\n")
    (pkg / "sub" / "c.py").write_text("from ..a import f\n")
    modules = module_files(("pkg",), tmp_path)
    graph = import_graph(modules)
    assert graph["pkg.a"] == {"pkg.b": 4}  # function-level `from pkg import b`: the submodule
    assert graph["pkg.b"] == {"pkg.sub": 4}  # not the TYPE_CHECKING import; `thing` is pkg.sub's
    assert graph["pkg.sub"] == {"pkg.sub.c": 1} and graph["pkg.sub.c"] == {"pkg.a": 1}
    comps = strongly_connected(graph)
    assert comps == [["pkg.a", "pkg.b", "pkg.sub", "pkg.sub.c"]]
    assert shortest_cycle(graph, "pkg.a", set(comps[0])) == ["pkg.a", "pkg.b", "pkg.sub", "pkg.sub.c", "pkg.a"]


def test_no_import_cycles_among_the_project_modules():
    found = cycles()
    assert not found, "import cycles:\n" + "\n".join(found)


if __name__ == "__main__":
    pkgs = tuple(sys.argv[1:]) or PACKAGES
    found = cycles(pkgs)
    mods = module_files(pkgs)
    print(f"{len(mods)} modules in {', '.join(pkgs)}; {len(found)} cycle(s)")
    for c in found:
        print(c)
    sys.exit(1 if found else 0)
