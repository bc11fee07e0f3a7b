"""The engine's shape: imports point only down (no cycle, not even through an import inside a function), the
backends import nothing above them, and no module outside ``scratchnet/backends/`` picks a backend by name.

The import graph is read from the source with ``ast``: every ``import`` and ``from ... import`` at any depth
(module level, inside functions and classes), plus every string that names a project module (what the
registry hands ``importlib``). A package's ``__init__``, which Python runs before a submodule, is not an
edge of its own: it is an edge only where it is imported.
"""

import ast
import shutil
from pathlib import Path

import pytest

import scratchnet
from scratchnet import backends

PACKAGE = Path(scratchnet.__file__).resolve().parent


def _modules(root):
    """Project module name -> its source file, for every .py file under the package at ``root``."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = (root.name,) + path.relative_to(root).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(name, path, modules):
    """The project modules that module ``name`` (at ``path``) imports, with the line of each."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    edges = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # ``from package import module`` imports the module; ``from module import name`` the module itself.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "." in node.value \
                and node.value in modules:
            targets = [node.value]  # a module loaded by its dotted name (importlib)
        for target in targets:
            while target and target not in modules:  # ``import a.b.c`` of a name inside a module
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.append((target, node.lineno))
    return edges


def import_graph(root=PACKAGE):
    modules = _modules(root)
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def find_cycle(graph):
    """One import cycle as a list of modules (the first repeated at the end), or None."""
    state = {}  # module -> "open" while on the path, "done" after

    def visit(module, path):
        state[module] = "open"
        path.append(module)
        for target, _ in graph[module]:
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = visit(target, path)
                if cycle:
                    return cycle
        path.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module, [])
            if cycle:
                return cycle
    return None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_finds_a_cycle_through_an_import_inside_a_function(tmp_path):
    """The check above can fail: a copy of the package with one planted import (inside a function, at the
    bottom of the graph) has a cycle, and the check names it."""
    copy = tmp_path / "scratchnet"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "*.cu", "*.cuh", "*.h"))
    leaf = copy / "geometry.py"
    leaf.write_text(leaf.read_text() + "\n\ndef _planted():\n    from scratchnet import nn\n\n    return nn\n")
    cycle = find_cycle(import_graph(copy))
    assert cycle is not None and "scratchnet.geometry" in cycle and "scratchnet.nn" in cycle, cycle


def test_imports_point_down_to_the_backends_and_the_geometry():
    """The backends import only backends and the geometry leaf; the geometry imports no project module; the
    modules above reach a backend only through the registry and the interface."""
    graph = import_graph()
    interface = {"scratchnet.backends", "scratchnet.backends.base"}
    for module, edges in graph.items():
        for target, line in edges:
            where = f"{module} (line {line}) imports {target}"
            if module == "scratchnet.geometry":
                pytest.fail(where + ": the geometry is the leaf")
            if module.startswith("scratchnet.backends"):
                assert target.startswith("scratchnet.backends") or target == "scratchnet.geometry", where
            elif target.startswith("scratchnet.backends"):
                assert target in interface, where + ": a backend's own module, not the registry or the interface"


# Where a backend's name may stand outside ``backends/``: user-facing data (a flag's default and help, the
# versions a run records) and the (module, name) pairs of pickled globals, where "numpy" is the library.
_USER_FACING_KEYWORDS = {"default", "help", "choices", "metavar"}
_KNOWN = {
    # The data loader's default backend; data.py is being split (download apart from the loader), and the
    # split replaces it by ``backends.reference()``.
    ("scratchnet/data.py", 'backends.get("numpy")'),
}


def _backend_names_in(path):
    """(line, source line) of each string naming a backend in a place that is not user-facing data."""
    names, source = set(backends.names()), path.read_text()
    tree = ast.parse(source)
    allowed = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg in _USER_FACING_KEYWORDS:
            allowed.update(map(id, ast.walk(node.value)))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "versions":
            allowed.update(map(id, ast.walk(node)))
        elif isinstance(node, ast.Tuple) and len(node.elts) == 2 and all(
                isinstance(item, ast.Constant) and isinstance(item.value, str) for item in node.elts):
            allowed.update(map(id, node.elts))
        elif isinstance(node, ast.JoinedStr):  # an f-string is a message
            allowed.update(map(id, ast.walk(node)))
    lines = source.splitlines()
    return [(node.lineno, lines[node.lineno - 1].strip()) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and node.value in names and id(node) not in allowed]


def test_no_backend_is_named_outside_the_backends():
    """Code above the backends asks the registry (``backends.for_array``, ``reference()``) or a backend's
    capabilities; it does not test or pick a backend by its name."""
    found = []
    for name, path in _modules(PACKAGE).items():
        relative = path.relative_to(PACKAGE.parent).as_posix()
        if name.startswith("scratchnet.backends"):
            continue
        found += [f"{relative}:{line}: {text}" for line, text in _backend_names_in(path)
                  if not any(relative == file and snippet in text for file, snippet in _KNOWN)]
    assert not found, "a backend named outside backends/:\n" + "\n".join(found)


def test_the_name_check_finds_a_backend_picked_by_name(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text('def transport(backend):\n    return "nccl" if backend == "cupy" else "mpi"\n')
    assert [line for line, _ in _backend_names_in(planted)] == [2]
