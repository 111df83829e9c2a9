"""The package's shape: no import cycles (function-local imports included), public threat API exported,
one registry per extension point (threats, tasks, judges)."""

from __future__ import annotations

import ast
from pathlib import Path

import adpo

SRC = Path(adpo.__file__).parent


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_lines(tree: ast.Module) -> set[int]:
    """Lines under ``if TYPE_CHECKING:`` (annotation-only imports never run)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING":
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def import_graph() -> dict[str, set[str]]:
    """Module -> the adpo modules it imports anywhere in its body (a submodule import also runs its
    packages' ``__init__``)."""
    files = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        tree = ast.parse(path.read_text())
        skip = _type_checking_lines(tree)
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in skip:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            for t in targets:
                if not t.startswith("adpo"):
                    continue
                parts = t.split(".")
                for i in range(1, len(parts) + 1):  # the module and the packages it runs on the way
                    name = ".".join(parts[:i])
                    if name in files and name != mod and not mod.startswith(name + "."):
                        graph[mod].add(name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    graph = import_graph()
    assert graph["adpo.trainer.steps"] >= {"adpo.threats.objectives", "adpo.threats.protocol"}  # the parser works
    assert cycles(graph) == []


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_public_threat_api():
    import adpo.threats as threats

    for name in threats.__all__:
        assert hasattr(threats, name), name
    assert {"image", "latent", "joint", "universal-image"} <= set(threats.THREATS)


def test_registries_are_the_only_lists():
    from adpo.eval import config, judges, tasks
    from adpo.threats import registry

    assert config.TASKS is tasks.TASKS  # the config validates against the registry itself
    assert set(judges.JUDGES) >= {"organism", "gcg13", "llm_attacks29", "llm"}
    assert set(registry.trainable()) == {"image", "latent", "joint"}
