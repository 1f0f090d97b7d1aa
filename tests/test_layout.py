"""The house's shape, as docs/architecture.md draws it: `models` <- `pipeline` <- `flows`, and
inside pipeline/ a few subpackages whose imports run one way down the data path, with no
circle between modules. Every import counts, including those inside functions and under
TYPE_CHECKING."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# pipeline's subpackages, lowest first: each may import only those before it (and itself)
LAYERS = ("imaging", "archive", "colorize", "review", "training")
TOP = ("models", "pipeline", "flows")  # the same rule one level up


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Our modules that `path` imports (`from a.b import c` counts a.b.c when that is a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in known}
    return found


def import_graph(packages: tuple[str, ...] = TOP) -> dict[str, set[str]]:
    paths = [p for package in packages for p in (ROOT / package).rglob("*.py")]
    known = {module_name(p) for p in paths}
    return {module_name(p): imports_of(p, known) - {module_name(p)} for p in paths}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
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
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def rank(module: str, order: tuple[str, ...], depth: int) -> int | None:
    parts = module.split(".")
    return order.index(parts[depth]) if len(parts) > depth and parts[depth] in order else None


def arrows_up(graph: dict[str, set[str]]) -> list[str]:
    """Imports from a lower layer to a higher one: among models/pipeline/flows, and among
    pipeline's subpackages."""
    bad = []
    for source, targets in graph.items():
        for target in targets:
            for order, depth in ((TOP, 0), (LAYERS, 1)):
                if depth == 1 and not (
                    source.startswith("pipeline.") and target.startswith("pipeline.")
                ):
                    continue
                here, there = rank(source, order, depth), rank(target, order, depth)
                if here is not None and there is not None and there > here:
                    bad.append(f"{source} -> {target}")
    return sorted(set(bad))


def test_pipeline_top_holds_only_its_subpackages():
    modules = [p.name for p in (ROOT / "pipeline").glob("*.py") if p.name != "__init__.py"]
    assert len(modules) <= 6, modules
    packages = {p.parent.name for p in (ROOT / "pipeline").glob("*/__init__.py")}
    assert packages == set(LAYERS)


def test_no_circles_and_no_arrows_back_up():
    graph = import_graph()
    assert len(graph) > 40 and graph["pipeline.colorize.worker"]  # the graph was really read
    assert cycles(graph) == []
    assert arrows_up(graph) == []


def test_the_checks_see_a_circle_and_an_arrow_up():
    graph = {"a.x": {"a.y"}, "a.y": {"a.x"}, "pipeline.imaging.images": set(),
             "pipeline.review.report": set(), "models.nets": set()}  # fmt: skip
    assert cycles(graph) == [["a.x", "a.y"]]
    graph["pipeline.imaging.images"] = {"pipeline.review.report"}
    graph["models.nets"] = {"pipeline.imaging.images"}
    assert arrows_up(graph) == [
        "models.nets -> pipeline.imaging.images",
        "pipeline.imaging.images -> pipeline.review.report",
    ]
