"""The layering of the project, read from the source: no import cycle, no import that points up.

The graph is built with `ast` from every module of `hsemo_jax` and `data_pipelines`: module-level
and function-level imports alike (a late import is still a dependency). `from pkg import name` is
an edge to `pkg.name` when that is a module, else to `pkg`; relative imports are resolved. Names
loaded by string (`importlib.import_module`, the lazy exports of `hsemo_jax.postprocess`) are not
seen.

Layers, bottom to top (nothing points up):

    leaf modules  hsemo_jax.{paths, labels, checks, fileio, digests, errors, runtime}
    ops/ <- models/ <- convert/, checkpoint, hub <- postprocess/, metrics, optim
        <- train/, distill/, predict/, intensity/, export/, extract <- bench/, commands/ <- cli
    data_pipelines/ (beside them; the applications may use it): leaf modules and models'
        preprocessing only
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hsemo_jax", "data_pipelines")

LEAF = tuple(f"hsemo_jax.{m}" for m in ("paths", "labels", "checks", "fileio", "digests", "errors", "runtime"))
PREPROCESSING = ("hsemo_jax.models", "hsemo_jax.models.transforms", "hsemo_jax.models.registry")


@dataclass(frozen=True)
class Rule:
    """Modules under any of `sources` (a name covers the module and everything below it), except
    those in `exempt`, must not import a module under any of `targets`, except those in `allowed`."""

    sources: tuple[str, ...]
    targets: tuple[str, ...]
    allowed: tuple[str, ...] = ()
    exempt: tuple[str, ...] = ()


LOW = ("hsemo_jax.ops", "hsemo_jax.models")
APPS = ("hsemo_jax.train", "hsemo_jax.predict", "hsemo_jax.commands", "hsemo_jax.distill", "hsemo_jax.intensity")
HUB, TRAIN = ("hsemo_jax.hub",), ("hsemo_jax.train",)
PREDICT, INTENSITY = ("hsemo_jax.predict",), ("hsemo_jax.intensity",)
HSEMO, DATA = ("hsemo_jax",), ("data_pipelines",)

RULES = {
    # name                                    Rule(who, must not import, allowed=..., exempt=...)
    "ops and models below the applications":  Rule(LOW, APPS),
    "ops and models below the hub":           Rule(LOW, HUB),
    "inference without the trainer":          Rule(PREDICT, TRAIN),
    "intensity without the trainer":          Rule(INTENSITY, TRAIN),
    "leaf modules import only leaf modules":  Rule(LEAF, PACKAGES, allowed=LEAF),
    "data pipelines: leaf and preprocessing": Rule(DATA, HSEMO, allowed=LEAF + PREPROCESSING),
}


def module_files() -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the project's packages."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module name of a `from ... import` statement's base."""
    if not node.level:
        return node.module
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _project_module(name: str, modules) -> str | None:
    """The longest prefix of dotted `name` that is a project module (None: not the project's)."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in modules:
            return ".".join(parts[:n])
    return None


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (anywhere in its source)."""
    files = module_files()
    graph: dict[str, set[str]] = {m: set() for m in files}
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [_project_module(a.name, files) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, is_package, node)
                targets = [_project_module(f"{base}.{a.name}" if f"{base}.{a.name}" in files else base, files)
                           for a in node.names]
            else:
                continue
            graph[module].update(t for t in targets if t is not None and t != module)
    return graph


def _under(module: str, names) -> bool:
    return any(module == n or module.startswith(n + ".") for n in names)


def violations(graph, rule: Rule) -> list[tuple[str, str]]:
    return sorted((src, dst) for src, dsts in graph.items() if _under(src, rule.sources) and src not in rule.exempt
                  for dst in dsts if _under(dst, rule.targets) and dst not in rule.allowed)


def cycles(graph) -> list[list[str]]:
    """One cycle (as a path that returns to its start) per strongly connected component with more
    than one module (Tarjan's algorithm, iterative)."""
    index, low, on_stack, stack, comps, counter = {}, {}, set(), [], [], [0]
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = set()
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.add(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        comps.append(comp)
    return [_cycle_in(graph, comp) for comp in comps]


def _cycle_in(graph, comp: set[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first search)."""
    start = min(comp)
    parent = {start: None}
    queue = [start]
    for v in queue:
        for w in sorted(graph[v] & comp):
            if w == start:  # v's path back to start, reversed, closed
                path = [v]
                while parent[path[-1]] is not None:
                    path.append(parent[path[-1]])
                return path[::-1] + [start]
            if w not in parent:
                parent[w] = v
                queue.append(w)
    raise AssertionError(f"no cycle through {start} in {sorted(comp)}")


@pytest.fixture(scope="module")
def graph():
    return import_graph()


def check_rule(graph, name: str) -> None:
    bad = violations(graph, RULES[name])
    assert not bad, f"{name}:\n" + "\n".join(f"  {src} -> {dst}" for src, dst in bad)


# ----------------------------------------------------------------------------------------------
# the graph itself
# ----------------------------------------------------------------------------------------------
def test_graph_sees_every_kind_of_import(graph):
    """The builder resolves what the rules rely on; if it silently saw nothing, every rule would pass."""
    assert "hsemo_jax.errors" in graph["hsemo_jax.postprocess.compound"]  # absolute, module level
    assert "hsemo_jax.checkpoint" in graph["hsemo_jax"]  # function level
    assert "hsemo_jax.models.registry" in graph["hsemo_jax.models"]  # package __init__
    assert "hsemo_jax.postprocess" in graph["hsemo_jax.predict.pipeline"]  # `from pkg import name`
    assert "hsemo_jax.checks" in graph["hsemo_jax.metrics"]  # `from pkg import submodule`
    assert {"hsemo_jax", "hsemo_jax.models.inference"} <= graph["hsemo_jax.extract"]  # `import pkg`, late
    assert "data_pipelines.features" in graph["hsemo_jax.extract"]  # across the two packages
    assert len(graph) > 90


def test_resolution_of_relative_and_submodule_imports():
    nodes = ast.parse("from . import b\nfrom .b import f\nfrom .. import c\nfrom ..pkg import d\n").body
    assert _resolve("top.pkg.a", False, nodes[0]) == "top.pkg"
    assert _resolve("top.pkg.a", False, nodes[1]) == "top.pkg.b"
    assert _resolve("top.pkg", True, nodes[1]) == "top.pkg.b"
    assert _resolve("top.pkg.a", False, nodes[2]) == "top"
    assert _resolve("top.pkg.a", False, nodes[3]) == "top.pkg"
    mods = {"top", "top.pkg", "top.pkg.b"}
    assert _project_module("top.pkg.b.f", mods) == "top.pkg.b"
    assert _project_module("numpy.linalg", mods) is None


def test_cycle_finder_and_rules_report_what_they_find():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert cycles(g) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    rule = Rule(("x",), ("y",), allowed=("y.ok",), exempt=("x.free",))
    g = {"x.m": {"y", "y.ok", "y.sub.k", "z"}, "xx": {"y"}, "x.free": {"y"}, "w": {"y"}}
    assert violations(g, rule) == [("x.m", "y"), ("x.m", "y.sub.k")]


def test_no_import_cycle(graph):
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join("  " + " -> ".join(c) for c in found)


# ----------------------------------------------------------------------------------------------
# the layering rules
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(RULES))
def test_rule(graph, name):
    check_rule(graph, name)
