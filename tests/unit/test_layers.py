"""The package is layered: a module imports only from its own layer or the layers before it, and no two
modules import each other, directly or in a circle. Every import counts, module level and inside functions."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "videobert_ds"
LAYERS = ["core", "data", "visual", "model", "objectives", "inference", "eval", "training", "stages", "cli", "bench"]
ENTRY = len(LAYERS)  # videobert_ds/train.py, videobert_ds/evaluate.py: script entry points above every layer


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            for target in targets:
                while target and target not in files:  # `import a.b.c` names module a.b.c or a package above it
                    target = target.rpartition(".")[0]
                if target.startswith("videobert_ds") and target != name:
                    graph[name].add(target)
    return {name: graph.get(name, set()) for name in files}


def layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) < 2:
        return ENTRY  # the package's own __init__
    if parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    return ENTRY


def test_every_folder_is_a_known_layer():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders <= set(LAYERS), f"folders that are not layers: {sorted(folders - set(LAYERS))}"


def test_imports_flow_from_later_layers_to_earlier_ones():
    wrong = [
        f"{src} ({LAYERS[layer(src)] if layer(src) < ENTRY else 'entry'}) imports {dst} "
        f"({LAYERS[layer(dst)] if layer(dst) < ENTRY else 'entry'})"
        for src, targets in import_graph().items()
        for dst in targets
        if layer(dst) > layer(src)
    ]
    assert not wrong, "imports against the layer order:\n" + "\n".join(sorted(wrong))


def test_no_import_circles():
    graph = import_graph()
    # Package __init__ files that only mark a folder import nothing; a circle through real modules is a bug.
    state: dict[str, int] = {}
    circles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                circles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_the_graph_sees_function_level_imports():
    """Guard the guard: train.py imports the trainer inside main(), and the graph must see it."""
    assert "videobert_ds.training.trainer" in import_graph()["videobert_ds.train"] or any(
        t.startswith("videobert_ds.training.") for t in import_graph()["videobert_ds.train"]
    )
