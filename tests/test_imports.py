"""The package's import graph: no cycles among its modules, and no imports of its own
modules inside functions or classes (a function-level import is for an optional or heavy
third-party dependency, where start-up time is the reason, never for dodging a cycle).

Every module of the installed package is parsed with ``ast``; nothing is imported
beyond the package itself (to find its files).
"""

from __future__ import annotations

import ast
import importlib.util
import pkgutil
import textwrap
from dataclasses import dataclass
from pathlib import Path

import gpucnn

# Third-party packages that are optional or slow to import: an own module that imports one
# at its top level, directly or through other own modules, may itself be imported inside a
# function (a backend factory, say).
OPTIONAL = {"array_api_strict", "cuda", "cupy", "cupyx", "IPython", "matplotlib", "numba", "threadpoolctl", "torch"}


@dataclass(frozen=True)
class Import:
    """One import of a module of the package: who, what, where, and whether inside a function or class."""

    importer: str
    target: str
    line: int
    scope: str | None  # the enclosing function or class, None at module level
    implicit: bool  # a package above the imported module, whose __init__ runs first


def package_modules(package) -> dict[str, Path]:
    """``{module name: source file}`` of every module of an imported package."""
    modules = {package.__name__: Path(package.__file__)}
    for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
        spec = importlib.util.find_spec(info.name)
        if spec is not None and spec.origin and spec.origin.endswith(".py"):
            modules[info.name] = Path(spec.origin)
    return modules


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _targets(name: str, alias: str | None, modules: dict[str, Path], root: str) -> list[tuple[str, bool]]:
    """The package's modules that ``from name import alias`` (or ``import name``) runs, as
    ``(module, implicit)``: the module itself, or ``name.alias`` when that is a module, and
    the packages above it (implicit; not the root package, whose import is under way
    whenever any of its modules runs)."""
    if not (name == root or name.startswith(root + ".")):
        return []
    module = f"{name}.{alias}" if alias and f"{name}.{alias}" in modules else name
    parts = module.split(".")
    parents = [".".join(parts[:i]) for i in range(2, len(parts))]
    found = [(parent, True) for parent in parents if parent in modules]
    return found + [(module, False)] if module in modules else found


def _dynamic_name(node: ast.Call) -> str | None:
    """The literal module name of ``__import__("x")`` or ``importlib.import_module("x")``."""
    func = node.func
    called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
    if called in ("__import__", "import_module") and node.args and isinstance(node.args[0], ast.Constant):
        value = node.args[0].value
        return value if isinstance(value, str) else None
    return None


def module_imports(name: str, path: Path, modules: dict[str, Path], root: str) -> list[Import]:
    """Every import of the package's own modules in one module's source."""
    package = name if _is_package(path) else name.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, scope: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            inner = scope
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                inner = child.name if scope is None else f"{scope}.{child.name}"
            elif isinstance(child, ast.Lambda):
                inner = scope or "<lambda>"
            targets: list[tuple[str, bool]] = []
            if isinstance(child, ast.Import):
                for alias in child.names:
                    targets += _targets(alias.name, None, modules, root)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base_parts = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join(base_parts + ([child.module] if child.module else []))
                else:
                    base = child.module or ""
                for alias in child.names:
                    targets += _targets(base, alias.name, modules, root)
            elif isinstance(child, ast.Call) and _dynamic_name(child):
                targets += _targets(_dynamic_name(child), None, modules, root)
            for target, implicit in dict.fromkeys(targets):
                found.append(Import(name, target, child.lineno, scope, implicit))
            visit(child, inner)

    visit(ast.parse(path.read_text(), str(path)), None)
    return found


def _top_level_third_party(path: Path, root: str) -> set[str]:
    """Top-level names of the packages a module imports at module level (not its own)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names - {root}


def check_imports(modules: dict[str, Path], root: str) -> tuple[list[list[str]], list[str]]:
    """``(cycles, function-level imports)`` of a package given as ``{module: file}``."""
    imports = [imp for name, path in modules.items() for imp in module_imports(name, path, modules, root)]
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for imp in imports:
        if imp.scope is None:
            graph[imp.importer].add(imp.target)
    optional = {name for name, path in modules.items() if _top_level_third_party(path, root) & OPTIONAL}
    while True:  # and the modules that import those at their top level
        more = {name for name, targets in graph.items() if targets & optional} - optional
        if not more:
            break
        optional |= more
    nested = [
        f"{modules[imp.importer]}:{imp.line}: {imp.importer} imports {imp.target} inside {imp.scope}"
        for imp in imports
        if imp.scope is not None and not imp.implicit and imp.target not in optional
    ]
    return _cycles(graph), nested


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path that returns to its start) per strongly connected component
    with more than one module, or a module that imports itself (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
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
            if len(component) > 1 or v in graph[v]:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return [_path_through(graph, component) for component in components]


def _path_through(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """A cycle inside one strongly connected component, from its first module back to it."""
    start, members = component[0], set(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        v = frontier.pop(0)
        for w in sorted(graph[v] & members):
            if w == start:
                return paths[v] + [start]
            if w not in paths:
                paths[w] = paths[v] + [w]
                frontier.append(w)
    raise AssertionError(f"{component} is not strongly connected")


# -- the package -----------------------------------------------------------------------


def test_the_package_has_no_import_cycles():
    cycles, _ = check_imports(package_modules(gpucnn), "gpucnn")
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_no_module_imports_its_own_package_inside_a_function():
    _, nested = check_imports(package_modules(gpucnn), "gpucnn")
    assert not nested, "function-level imports of the package's own modules:\n" + "\n".join(nested)


def test_every_module_of_the_package_is_checked():
    modules = package_modules(gpucnn)
    for name in ("gpucnn", "gpucnn.layers", "gpucnn.model", "gpucnn.io", "gpucnn.kernels", "gpucnn.kernels.numpy_set"):
        assert name in modules, name


# -- the checker finds what it looks for -------------------------------------------------


def _write_package(tmp_path: Path, files: dict[str, str]) -> dict[str, Path]:
    modules = {}
    for relative, source in files.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
        name = relative.removesuffix(".py").replace("/", ".").removesuffix(".__init__")
        modules[name] = path
    return modules


def test_the_checker_finds_a_cycle_and_a_function_level_import(tmp_path):
    modules = _write_package(
        tmp_path,
        {
            "pkg/__init__.py": "from . import a\n",
            "pkg/a.py": "from .b import thing\n",
            "pkg/b.py": "import pkg.c\nthing = 1\n",
            "pkg/c.py": "from pkg import a\n",  # a -> b -> c -> a
            "pkg/d.py": "def late():\n    from .a import x\n    import numba\n    return x\n",
            "pkg/sub/__init__.py": "",
            "pkg/sub/jit.py": "import numba\n",
            "pkg/sub/fast.py": "from .jit import numba\n",
            "pkg/e.py": "def backend():\n    from .sub import fast\n    return fast\n",  # numba, through jit: allowed
            "pkg/f.py": "import importlib\ndef dodge():\n    return importlib.import_module('pkg.b')\n",
        },
    )
    cycles, nested = check_imports(modules, "pkg")
    assert cycles == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]
    assert len(nested) == 2, nested
    assert nested[0].endswith("pkg.d imports pkg.a inside late")
    assert nested[1].endswith("pkg.f imports pkg.b inside dodge")


def test_the_checker_passes_a_clean_package(tmp_path):
    modules = _write_package(
        tmp_path,
        {
            "pkg/__init__.py": "from .top import run\n",
            "pkg/low.py": "import numpy\n",
            "pkg/top.py": "from . import low\nfrom .low import numpy\ndef run():\n    import matplotlib\n",
        },
    )
    assert check_imports(modules, "pkg") == ([], [])
