"""The package's shape, read from its source (docs/architecture.md): the layers' order (also
checked by import-linter in CI, ``lint-imports``), no import circle between modules, no import of
another module's private names, and no function over 60 lines.

Every import counts, those inside functions too: a circle hidden in a function still ties two
modules together."""

from __future__ import annotations

import ast
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pyro_nf"
MAX_FUNCTION_LINES = 60


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> dict[str, ast.Module]:
    return {_module_name(p): ast.parse(p.read_text(), str(p)) for p in PACKAGE.rglob("*.py")}


SOURCES = _sources()


def _imports(name: str, tree: ast.Module) -> list[tuple[str, list[str]]]:
    """(imported module, names) for every ``from pyro_nf... import`` and ``import pyro_nf...``;
    a name that is itself a submodule counts as an import of that submodule."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] == "pyro_nf":
            names = [a.name for a in node.names]
            subs = [f"{node.module}.{n}" for n in names if f"{node.module}.{n}" in SOURCES]
            found += [(s, []) for s in subs]
            rest = [n for n in names if f"{node.module}.{n}" not in SOURCES]
            if rest or not subs:
                found.append((node.module, rest))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.split(".")[0] == "pyro_nf"]
    return found


def _graph() -> dict[str, set[str]]:
    return {name: {target for target, _ in _imports(name, tree) if target != name}
            for name, tree in SOURCES.items()}


def _layers() -> list[list[str]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contract = config["tool"]["importlinter"]["contracts"][0]
    return [[m.strip() for m in layer.split("|")] for layer in contract["layers"]]


def _layer_of(module: str, layers: list[list[str]]) -> int | None:
    for index, layer in enumerate(layers):
        if any(module == m or module.startswith(m + ".") for m in layer):
            return index
    return None


def test_every_module_is_in_a_layer_and_imports_only_its_own_or_lower_ones():
    layers = _layers()  # top first
    unplaced = [m for m in SOURCES if m != "pyro_nf" and _layer_of(m, layers) is None]
    assert not unplaced, f"modules in no layer of pyproject.toml's contract: {unplaced}"
    upward = [(m, t) for m, targets in _graph().items() for t in targets
              if m != "pyro_nf" and _layer_of(t, layers) is not None
              and _layer_of(t, layers) < _layer_of(m, layers)]
    assert not upward, f"imports from a lower layer to a higher one: {upward}"


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the graph's strongly connected components of two or more."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_circle_between_modules():
    """A package's ``__init__`` re-exports its modules; only the modules' own imports count
    (an import of a package is an import of its ``__init__``)."""
    graph = {m: {t for t in targets if not (SOURCES.get(t) and _is_package(t)
                                             and m.startswith(t + "."))}
             for m, targets in _graph().items()}
    assert _strongly_connected(graph) == []


def _is_package(name: str) -> bool:
    return (ROOT / Path(*name.split(".")) / "__init__.py").exists()


def test_the_circle_finder_finds_a_circle():
    assert _strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [
        ["a", "b", "c"]]


def test_no_module_imports_another_modules_private_names():
    private = [(m, target, n) for m, tree in SOURCES.items()
               for target, names in _imports(m, tree) for n in names
               if n.startswith("_") and not n.startswith("__")]
    assert not private, private


def test_no_function_is_longer_than_60_lines():
    long = [(m, node.name, node.end_lineno - node.lineno + 1)
            for m, tree in SOURCES.items() for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, long
