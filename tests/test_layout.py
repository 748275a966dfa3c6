"""The package's layering, read from the source: every project import at module top, none reaching up a layer, and
no import cycle. CONTRIBUTING.md explains the layers; this test is what keeps them."""

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "deeplab"

# The layers, bottom to top: a module may import from its own layer or below, never above. The first matching
# prefix decides (so deeplab.model.* is layer 1). `__main__` modules are entry points, in the commands' layer.
LAYERS = [
    ("deeplab.cli", 4), ("deeplab.train", 4), ("deeplab.evaluate", 4), ("deeplab.predict", 4),  # python -m deeplab.*
    ("deeplab.inference", 3), ("deeplab.export", 3), ("deeplab.convert", 3), ("deeplab.bench", 3),
    ("deeplab.prediction_files", 3), ("deeplab.prediction_video", 3),
    ("deeplab.engine", 2),
    ("deeplab.model", 1), ("deeplab.data", 1), ("deeplab.losses", 1),
    ("deeplab.errors", 0), ("deeplab.schema", 0), ("deeplab.torch_files", 0), ("deeplab.metrics", 0), ("deeplab.visualization", 0),
    ("deeplab.figures", 0),
    ("deeplab.onnx_model", 0), ("deeplab.progress", 0), ("deeplab.timing", 0), ("deeplab", 0),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(name: str) -> int:
    if name.endswith(".__main__"):
        return 4
    return next(rank for prefix, rank in LAYERS if name == prefix or name.startswith(prefix + "."))


def project_imports(tree: ast.AST) -> list[tuple[ast.stmt, str]]:
    """(statement, imported module) for every import of a deeplab module anywhere in the tree."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node, a.name) for a in node.names if a.name.split(".")[0] == "deeplab"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                node.module.split(".")[0] == "deeplab":
            # `from deeplab.cli import export` imports the module deeplab.cli.export
            found += [(node, f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module)
                      for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level:
            found.append((node, "relative"))
    return found


def import_graph() -> dict[str, set[str]]:
    return {name: {target for _, target in project_imports(ast.parse(path.read_text()))} - {name}
            for name, path in MODULES.items()}


def test_the_layer_table_covers_every_module():
    assert len(MODULES) > 30  # the walk found the package
    # layer() answers for any deeplab.* name through the bare "deeplab" entry, so that it answers proves nothing:
    # every module but the package itself must be placed by an entry of its own part of the package
    placed_by = {name: next(prefix for prefix, _ in LAYERS if name == prefix or name.startswith(prefix + "."))
                 for name in MODULES if not name.endswith(".__main__")}
    unplaced = sorted(name for name, prefix in placed_by.items() if prefix == "deeplab" and name != "deeplab")
    assert not unplaced, f"add these modules to LAYERS (and CONTRIBUTING.md): {unplaced}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_project_imports_are_absolute_at_module_top_and_point_down(name):
    tree = ast.parse(MODULES[name].read_text())
    top = set(map(id, tree.body))
    for node, target in project_imports(tree):
        assert target != "relative", f"{name}:{node.lineno}: use an absolute import (from deeplab.x import y)"
        assert id(node) in top, f"{name}:{node.lineno}: import of {target} inside a function or block; move it " \
                                "to the top of the module"
        assert target in MODULES, f"{name}:{node.lineno}: {target} is not a module of the package"
        assert layer(target) <= layer(name), f"{name} (layer {layer(name)}) imports {target} (layer " \
                                             f"{layer(target)}): a module may only import from its layer or below"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """The first import cycle a depth-first search meets, as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target, path + [target])):
                return cycle
        state[node] = 2
        return None

    return next((c for start in sorted(graph) if start not in state and (c := visit(start, [start]))), None)


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_checks_catch_what_they_are_for():
    """The same rules find an import inside a function, one reaching up, and a cycle, in made-up modules."""
    inner = ast.parse("def f():\n    from deeplab.engine import trainer\n")
    (node, target), = project_imports(inner)
    assert target == "deeplab.engine.trainer" and node not in inner.body
    assert layer("deeplab.engine.trainer") > layer("deeplab.model.backbone")  # model importing it would be refused
    assert layer("deeplab.cli.train") == layer("deeplab.export.__main__") == 4
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.parametrize("name", sorted(n for n in MODULES if not n.endswith("__main__")))
def test_every_module_imports_on_its_own(name):
    importlib.import_module(name)
