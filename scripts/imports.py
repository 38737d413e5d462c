#!/usr/bin/env python3
"""The import graph of the lowkeyd package: print it, and fail on a cycle or a layer crossed.

Reads the source with :mod:`ast` alone (nothing is imported, so it runs without the
package's dependencies). Every import counts, a deferred one inside a function too:
it runs all the same, only later. Imports under ``if TYPE_CHECKING:`` do not run and
are left out.

The layers (README, How it works):

* ``lowkeyd.engine`` knows nothing of files, folders or daemons: it imports none of
  the photo layer, the pipeline, serving, the daemon or the command line;
* ``lowkeyd.photo`` never imports torch, nor the engine, the pipeline, serving, the daemon or the command line;
* ``lowkeyd.serving`` (worker, jobs, outbox, the API) imports neither the daemon nor the cluster: both
  stand on it, side by side;
* nothing but the command line imports the command line.

Usage: ``python scripts/imports.py [--modules] [--root PACKAGE_DIR]``. Exit status 1 on a
cycle or a crossed layer, 0 otherwise.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

# (importing package, what it must not import, importers exempt, why)
RULES = (
    (
        "lowkeyd.engine",
        ("lowkeyd.photo", "lowkeyd.pipeline", "lowkeyd.serving", "lowkeyd.daemon", "lowkeyd.cli"),
        (),
        "the engine knows nothing of files or daemons",
    ),
    (
        "lowkeyd.photo",
        ("torch", "torchvision", "facenet_pytorch", "lpips", "lowkeyd.engine", "lowkeyd.pipeline", "lowkeyd.serving",
         "lowkeyd.daemon", "lowkeyd.cli"),
        (),
        "the photo layer never imports torch or the engine",
    ),
    (
        "lowkeyd.serving",
        ("lowkeyd.daemon", "lowkeyd.cluster", "lowkeyd.cli"),
        (),
        "the daemon and the cluster stand on serving, not under it",
    ),
    # `python -m lowkeyd` is the command line's own door.
    ("lowkeyd", ("lowkeyd.cli",), ("lowkeyd.cli", "lowkeyd.__main__"), "only the command line imports the command line"),
)


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement that runs, at any depth; the body of ``if TYPE_CHECKING:`` is skipped."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            yield from _runtime_imports(ast.Module(body=child.orelse, type_ignores=[]))
        else:
            yield from _runtime_imports(child)


def imports_of(path: Path, name: str, modules: set[str]) -> set[str]:
    """The modules ``path`` (module ``name``) imports: lowkeyd's own by module, others by their top-level name."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in _runtime_imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            # "from package import module" imports the module; "from module import name" the module itself.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for target in targets:
            if target == "__future__":
                continue
            if target.split(".")[0] != "lowkeyd":
                found.add(target.split(".")[0])
                continue
            # "import lowkeyd.x.y" for a name inside a module: the longest prefix that is a module.
            while target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]
            if target != name:
                found.add(target)
    return found


def graph(root: Path) -> dict[str, set[str]]:
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    modules = set(files)
    return {name: imports_of(path, name, modules) for name, path in files.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in edges:
                continue  # outside the package
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(1000, 4 * len(edges)))
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(edges: dict[str, set[str]]) -> list[str]:
    out = []
    for importer, targets in sorted(edges.items()):
        for package, forbidden, exempt, why in RULES:
            if not _within(importer, package) or any(_within(importer, e) for e in exempt):
                continue
            for target in sorted(targets):
                if any(_within(target, f) for f in forbidden):
                    out.append(f"{importer} imports {target}: {why}")
    return out


def room(name: str, edges: dict[str, set[str]]) -> str:
    """The package a module belongs to (a package is its own room)."""
    if any(other.startswith(name + ".") for other in edges):
        return name
    return name.rsplit(".", 1)[0] if "." in name else name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent / "lowkeyd", help="the package's folder")
    parser.add_argument("--modules", action="store_true", help="print every module's imports, not only the packages'")
    args = parser.parse_args(argv)
    edges = graph(args.root)
    if args.modules:
        for name, targets in sorted(edges.items()):
            print(f"{name} -> {', '.join(sorted(targets)) or '-'}")
    else:
        between: dict[str, Counter[str]] = defaultdict(Counter)
        for name, targets in edges.items():
            for target in targets:
                if target in edges and room(target, edges) != room(name, edges):
                    between[room(name, edges)][room(target, edges)] += 1
        for package in sorted({room(n, edges) for n in edges}):
            uses = ", ".join(f"{t} ({n})" for t, n in sorted(between[package].items()))
            print(f"{package} -> {uses or '-'}")
    found = cycles(edges)
    crossed = violations(edges)
    internal = sum(t in edges for targets in edges.values() for t in targets)
    print(f"{len(edges)} modules, {internal} imports between them")
    for component in found:
        print(f"cycle: {' <-> '.join(component)}")
    for line in crossed:
        print(f"layer crossed: {line}")
    if not found:
        print("no cycles")
    if not crossed:
        print("no layer crossed")
    return 1 if found or crossed else 0


if __name__ == "__main__":
    sys.exit(main())
