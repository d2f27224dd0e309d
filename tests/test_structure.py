"""The package's structure: no import cycle in the formats layer, no private name across modules.

Read from the sources (``ast``), so a new module is covered as soon as it exists.
"""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = {"formats": ROOT / "formats", "hwlab": ROOT / "hwlab", "sim": ROOT / "sim", "kernels": ROOT / "kernels"}


def modules(package: str) -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text()) for p in sorted(PACKAGES[package].glob("*.py"))}


def local_imports(tree: ast.Module) -> set[str]:
    """Modules of the same package that ``tree`` imports (``from .x import y``, ``from . import x``)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            out |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
    return out


def test_the_formats_layer_has_no_import_cycle():
    graph = {name: local_imports(tree) - {"__init__"} for name, tree in modules("formats").items()}
    done, active = set(), []

    def visit(node):
        if node in active:
            pytest.fail("import cycle: " + " -> ".join(active[active.index(node):] + [node]))
        if node in done:
            return
        active.append(node)
        for dep in sorted(graph.get(node, ())):
            visit(dep)
        active.pop()
        done.add(node)

    for name in sorted(graph):
        visit(name)


def test_the_base_and_the_registry_import_almost_nothing():
    graph = {name: local_imports(tree) for name, tree in modules("formats").items()}
    assert graph["base"] <= {"decomposition"}
    assert graph["decomposition"] == set()
    assert graph["registry"] == {"base"}
    assert graph["scales"] <= {"encodings", "rounding"}  # the E4M3 scale from the minifloat definition


def test_formats_imports_nothing_of_the_rest_of_hwlab():
    for name, tree in modules("formats").items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                target = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                assert not (target or "").startswith(("hwlab.sim", "hwlab.kernels", "hwlab.cli")), name


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_private_name_is_used_across_modules(package):
    for name, tree in modules(package).items():
        imported_modules = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                assert not private, f"{package}/{name}.py imports private {private} from {node.module}"
                if node.level == 1 and node.module is None:
                    imported_modules |= {a.asname or a.name for a in node.names}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in imported_modules and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                pytest.fail(f"{package}/{name}.py reads {node.value.id}.{node.attr}")
