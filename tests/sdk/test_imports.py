"""sbsync's modules import at the top, and their imports form no cycle (the emulator is a
product of its own, checked by its own suite)."""

from __future__ import annotations

import ast
import pathlib

import sbsync

PACKAGE = pathlib.Path(sbsync.__file__).parent


def _modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(relative.parts).removesuffix(".__init__")
        if name.startswith("sbsync.emulator"):
            continue
        found[name] = ast.parse(path.read_text(), str(path))
    return found


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _runtime_imports(module: str, tree: ast.Module) -> set[str]:
    """sbsync modules ``module`` imports at import time (not under TYPE_CHECKING)."""
    package = module if (PACKAGE / "/".join(module.split(".")[1:]) / "__init__.py").exists() else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and _is_type_checking(node):
                continue
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                for alias in node.names:
                    found.add(f"{base}.{alias.name}")
                found.add(base)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)

    visit(tree.body)
    return found


def test_no_import_inside_a_function():
    late = []
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                late += [
                    f"{name}:{inner.lineno}"
                    for inner in ast.walk(node)
                    if isinstance(inner, (ast.Import, ast.ImportFrom))
                ]
    assert late == []


def test_no_import_cycle():
    modules = _modules()
    graph = {name: {m for m in _runtime_imports(name, tree) if m in modules and m != name} for name, tree in modules.items()}
    # A package's modules importing the package itself only need what it has imported so far.
    graph = {name: {m for m in deps if not name.startswith(m + ".")} for name, deps in graph.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def walk(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                cycles.append([*path[path.index(dep) :], dep] if dep in path else [name, dep])
            elif dep not in state:
                walk(dep, [*path, dep])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name, [name])
    assert cycles == []



#: Private names of other libraries than the SDK that sbsync touches, with why.
NOT_THE_SDK = {
    "_log_destroy_pending": "asyncio.Task: a task frozen at interpreter exit must not warn",
}


def test_no_private_sdk_name_outside_the_sdk_door():
    """Outside ``sbsync/_sdk``: no private SDK module imported, and no private attribute read
    that sbsync does not define itself (sbsync's own ``_portal``, ``_closed``... are fine)."""
    modules = _modules()
    outside = {name: tree for name, tree in modules.items() if not name.startswith("sbsync._sdk")}
    # What sbsync defines itself, outside the door (a name it also uses for its own attributes,
    # such as _session, cannot be told apart here).
    own: set[str] = set()
    for tree in outside.values():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                own.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                own.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                own.add(node.id)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                own.update((alias.asname or alias.name).split(".")[-1] for alias in node.names)
    own.update(name.rpartition(".")[2] for name in modules)  # sbsync._portal and the like
    found = []
    for name, tree in outside.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("azure.") and "._" in node.module:
                found.append(f"{name}:{node.lineno} imports {node.module}")
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                if node.attr not in own and node.attr not in NOT_THE_SDK:
                    found.append(f"{name}:{node.lineno} reads .{node.attr}")
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in {"getattr", "hasattr", "setattr"}
                and len(node.args) > 1
                and isinstance(node.args[1], ast.Constant)
                and str(node.args[1].value).startswith("_")
                and node.args[1].value not in own
            ):
                found.append(f"{name}:{node.lineno} {node.func.id}(..., {node.args[1].value!r})")
    assert found == []
