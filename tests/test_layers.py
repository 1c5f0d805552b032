"""The house rules of the code base, checked from the source: layers import one way, no module imports
another in a circle, library modules do not import click, experts never import the router."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# A layer may import only the layers after it in this list (and itself).
ORDER = ["router.commands", "router.serve", "router.apps", "router.core", "experts"]
CLI_MODULES = ("router.commands",)  # the click doors


def modules() -> dict[str, Path]:
    found = {}
    for pkg in ("router", "experts"):
        for path in (ROOT / pkg).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _runtime_nodes(tree: ast.AST):
    """Every node but those under ``if TYPE_CHECKING:`` (type-only imports never run)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            test = getattr(child, "test", None)
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def imports(path: Path, name: str, known: dict[str, Path]) -> set[str]:
    """Project modules imported anywhere in the file (also inside functions)."""
    out: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in _runtime_nodes(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def layer(name: str) -> int | None:
    for i, prefix in enumerate(ORDER):
        if name == prefix or name.startswith(prefix + "."):
            return i
    return None  # router/__init__.py: the lazy public API


GRAPH = {n: imports(p, n, modules()) for n, p in modules().items()}


def test_layers_import_one_way():
    wrong = [
        f"{a} -> {b}"
        for a, deps in GRAPH.items()
        for b in deps
        if layer(a) is not None and layer(b) is not None and layer(b) < layer(a)
    ]
    assert not wrong, wrong


def test_no_import_circles():
    seen: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(n: str, path: list[str]) -> list[str] | None:
        seen[n] = 1
        for d in sorted(GRAPH.get(n, ())):
            if d == "router":  # the package's lazy re-exports are not imported at load time
                continue
            if seen.get(d) == 1:
                return path + [d]
            if d not in seen:
                cycle = visit(d, path + [d])
                if cycle:
                    return cycle
        seen[n] = 2
        return None

    for n in sorted(GRAPH):
        if n not in seen:
            cycle = visit(n, [n])
            assert cycle is None, " -> ".join(cycle)


def test_only_the_command_doors_import_click():
    for name, path in modules().items():
        if name.startswith(CLI_MODULES):
            continue
        tree = ast.parse(path.read_text("utf-8"))
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert "click" not in names, name


def test_experts_never_import_the_router():
    wrong = [
        f"{a} -> {b}" for a, deps in GRAPH.items() if a.startswith("experts") for b in deps if b.startswith("router")
    ]
    assert not wrong, wrong
