"""Architecture rules, read from the source with ast: no import cycles, a kit free of services, short modules."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The first-party packages whose imports are checked.
PACKAGES = ("genmesh", "gateway", "services")
#: Generated stubs: neither checked nor counted.
GENERATED = ("genmesh.v1",)
#: The command line: allowed to import everything, imported by nothing.
CLI = "genmesh.cli"
MAX_LINES = 400
#: Folders whose modules must stay within MAX_LINES (bench/ and scripts/ are exempt).
SIZED = ("genmesh", "gateway", "services", "tests")


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def discover(root: Path, packages: Iterable[str], exclude: Iterable[str] = ()) -> dict[str, Path]:
    """Every module of ``packages`` under ``root`` by dotted name (a package by its ``__init__.py``)."""
    excluded = tuple(exclude)
    modules: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            if not any(_within(name, prefix) for prefix in excluded):
                modules[name] = path
    return modules


def _imports(name: str, path: Path) -> list[tuple[str, tuple[str, ...]]]:
    """``(module, names)`` per import anywhere in a module (``if TYPE_CHECKING:`` and function bodies too).

    ``import a.b`` gives ``("a.b", ())``, ``from a import b, c`` gives ``("a", ("b", "c"))``; relative
    imports are made absolute.
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, tuple[str, ...]]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], *([base] if base else [])])
            found.append((base, tuple(alias.name for alias in node.names if alias.name != "*")))
    return found


def _resolve(name: str, modules: Mapping[str, Path]) -> str | None:
    """The longest first-party module that ``name`` is or lies in, if any."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if (candidate := ".".join(parts[:end])) in modules:
            return candidate
    return None


def import_graph(modules: Mapping[str, Path]) -> dict[str, set[str]]:
    """Module → the first-party modules it imports (``from pkg import module`` resolved to the module)."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str | None] = set()
        for base, names in _imports(name, path):
            submodules = [f"{base}.{n}" for n in names if f"{base}.{n}" in modules]
            targets.update(submodules)
            if len(submodules) < len(names) or not names:
                targets.add(_resolve(base, modules))
        graph[name] = {target for target in targets if target is not None and target != name}
    return graph


def find_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """One cycle per strongly connected component that has one, as ``[a, b, ..., a]``."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [_cycle_through(component, graph) for component in components]


def _cycle_through(component: list[str], graph: Mapping[str, Iterable[str]]) -> list[str]:
    """A shortest path from the component's first module back to itself, within the component."""
    start, members = component[0], set(component)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph.get(node, ())):
                if target == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if target in members and target not in previous:
                    previous[target] = node
                    following.append(target)
        frontier = following
    raise AssertionError(f"no cycle through {start}")


def forbidden_imports(modules: Mapping[str, Path], forbidden: Iterable[str], exempt: Iterable[str] = ()) -> list[str]:
    """``module imports name`` for each import of a ``forbidden`` package by a module outside ``exempt``."""
    banned, allowed = tuple(forbidden), tuple(exempt)

    def is_banned(name: str) -> bool:
        return any(_within(name, prefix) for prefix in banned)

    found: set[str] = set()
    for name, path in modules.items():
        if any(_within(name, prefix) for prefix in allowed):
            continue
        for base, names in _imports(name, path):
            hits = [base] if is_banned(base) else [f"{base}.{n}" for n in names if is_banned(f"{base}.{n}")]
            found.update(f"{name} imports {hit}" for hit in hits)
    return sorted(found)


def long_modules(root: Path, folders: Iterable[str], limit: int, exclude: Iterable[str] = ()) -> list[str]:
    """``path: N lines`` for each module under ``folders`` longer than ``limit`` lines."""
    skipped = [root / Path(*prefix.split(".")) for prefix in exclude]
    found = []
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            lines = len(path.read_text().splitlines())
            if lines > limit and not any(path.is_relative_to(skip) for skip in skipped):
                found.append(f"{path.relative_to(root)}: {lines} lines")
    return found


def _first_party() -> dict[str, Path]:
    return discover(ROOT, PACKAGES, GENERATED)


def test_no_import_cycles() -> None:
    cycles = find_cycles(import_graph(_first_party()))
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_kit_imports_no_service() -> None:
    kit = {name: path for name, path in _first_party().items() if _within(name, "genmesh")}
    violations = forbidden_imports(kit, ("services", "gateway"), exempt=(CLI,))
    assert not violations, "the shared kit imports a service:\n" + "\n".join(violations)


def test_nothing_imports_the_cli() -> None:
    violations = forbidden_imports(_first_party(), (CLI,), exempt=(CLI,))
    assert not violations, "imports of the command line:\n" + "\n".join(violations)


def test_modules_are_short() -> None:
    violations = long_modules(ROOT, SIZED, MAX_LINES, GENERATED)
    assert not violations, f"modules over {MAX_LINES} lines:\n" + "\n".join(violations)


def _write(root: Path, files: Mapping[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_checker_finds_cycles_through_every_kind_of_import(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "def f() -> None:\n    from pkg import b\n",
            "pkg/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .c import X\n",
            "pkg/c.py": "import pkg.a\nX = 1\n",
            "pkg/d.py": "from pkg import a, VERSION\n",
            "pkg/sub/__init__.py": "from . import e\n",
            "pkg/sub/e.py": "from ..d import a\n",
        },
    )
    graph = import_graph(discover(tmp_path, ["pkg"]))
    assert graph == {
        "pkg": set(),
        "pkg.a": {"pkg.b"},
        "pkg.b": {"pkg.c"},
        "pkg.c": {"pkg.a"},
        "pkg.d": {"pkg", "pkg.a"},
        "pkg.sub": {"pkg.sub.e"},
        "pkg.sub.e": {"pkg.d"},
    }
    assert find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]
    assert find_cycles({**graph, "pkg.c": set()}) == []


def test_checker_finds_forbidden_imports(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "kit/__init__.py": "",
            "kit/x.py": "def f() -> None:\n    from services import y\n",
            "kit/cli/__init__.py": "import services.y\n",
            "kit/z.py": "from kit import cli\n",
            "services/__init__.py": "",
            "services/y.py": "",
        },
    )
    modules = discover(tmp_path, ["kit", "services"])
    assert forbidden_imports(modules, ["services"], exempt=["kit.cli"]) == ["kit.x imports services"]
    assert forbidden_imports(modules, ["kit.cli"], exempt=["kit.cli"]) == ["kit.z imports kit.cli"]


def test_checker_finds_long_modules(tmp_path: Path) -> None:
    _write(tmp_path, {"pkg/ok.py": "x = 1\n" * 3, "pkg/long.py": "x = 1\n" * 4, "pkg/gen/big.py": "x = 1\n" * 9})
    assert long_modules(tmp_path, ["pkg"], 3, exclude=["pkg.gen"]) == ["pkg/long.py: 4 lines"]
