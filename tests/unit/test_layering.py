"""The package's imports follow the layering list in the docstring of
``redlock_aio/__init__.py``.

The list is read from the docstring at test time: lines ``- ``_name``: ...``
(a subpackage module as ``_sub.name`` or ``_sub/name``), in import order. A
module may import only modules listed before it, besides the standard library
and third-party packages; modules of one entry (a listed subpackage and its
submodules) may import each other; ``__init__`` imports anything, and stands
just above the last listed module it imports (modules listed after that, such
as a command line, may import the façade). A module the list does not name is
checked as above everything: it may import any module, and no listed module may
import it. Every import counts: module level, inside a
function, and under ``if TYPE_CHECKING:`` (a type-only import up the list is
still a dependency up the list, and the first step of a cycle).

Imports are read with :mod:`ast`, without importing the package.
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "redlock_aio"
ROOT = Path(__file__).resolve().parents[2] / PACKAGE

#: Modules that need no entry in the list: the façade, which imports anything,
#: and the ``python -m redlock_aio`` entry point, on top of everything by nature.
EXEMPT = frozenset({"__init__", "__main__"})

#: ``- ``name``: ...`` in the docstring; ``name`` dotted or with slashes.
ENTRY = re.compile(r"^\s*[-*]\s+``(?P<name>[A-Za-z_][\w./]*)``\s*:", re.MULTILINE)


@dataclass(frozen=True)
class Import:
    """One import of a package module by another."""

    importer: str
    target: str
    path: str  # as shown: redlock_aio/_x.py
    line: int
    where: str  # "module level", "in a function", "under TYPE_CHECKING"

    def __str__(self) -> str:
        return (
            f"{self.path}:{self.line}: {self.importer} imports {self.target} "
            f"({self.where})"
        )


def module_name(path: Path, root: Path = ROOT) -> str:
    """``_errors``, ``testing`` (for ``testing/__init__.py``), ``testing._proxy``;
    the top ``__init__.py`` is ``__init__``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def package_modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the package at ``root``, by :func:`module_name`."""
    found = {
        module_name(path, root): path
        for path in sorted(root.rglob("*.py"))
        if "__pycache__" not in path.parts
    }
    assert "__init__" in found, f"no package found at {root}"
    return found


def layering_list(root: Path = ROOT) -> list[str]:
    """The module names of the docstring's list, in order, dotted."""
    tree = ast.parse((root / "__init__.py").read_text(encoding="utf-8"))
    docstring = ast.get_docstring(tree) or ""
    names = []
    for match in ENTRY.finditer(docstring):
        name = match["name"].strip("/").replace("/", ".")
        name = name.removesuffix(".py").removesuffix(".__init__")
        names.append(name)
    assert names, (
        f"no layering list in the docstring of {PACKAGE}/__init__.py "
        "(lines '- ``_name``: ...')"
    )
    duplicates = sorted({n for n in names if names.count(n) > 1})
    assert not duplicates, f"listed more than once: {', '.join(duplicates)}"
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Collector(ast.NodeVisitor):
    """Every import in one module, resolved to package module names, with where
    it stands (module level, in a function, under TYPE_CHECKING)."""

    def __init__(
        self, top: str, name: str, path: str, modules: dict[str, Path]
    ) -> None:
        self.top = top  # the package's import name
        self.name = name
        self.path = path
        self.modules = modules
        self.context: list[str] = []
        self.found: list[Import] = []
        # The package the module's relative imports start from.
        parts = [] if name == "__init__" else name.split(".")
        if not path.endswith("__init__.py"):
            parts = parts[:-1]
        self.package = parts

    # Context -----------------------------------------------------------------

    def _visit_in(self, context: str, node: ast.AST) -> None:
        self.context.append(context)
        self.generic_visit(node)
        self.context.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._visit_in("in a function", node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._visit_in("in a function", node)

    def visit_If(self, node: ast.If) -> None:
        if not _is_type_checking(node.test):
            self.generic_visit(node)
            return
        self.visit(node.test)
        self.context.append("under TYPE_CHECKING")
        for child in node.body:
            self.visit(child)
        self.context.pop()
        for child in node.orelse:
            self.visit(child)

    # Imports -----------------------------------------------------------------

    def _add(self, dotted: list[str], node: ast.stmt) -> None:
        target = ".".join(dotted) or "__init__"
        if target == self.name:
            return
        # A name of a module's package that is not a module itself (a class, a
        # function) is an import of that package.
        while target not in self.modules and "." in target:
            target = target.rsplit(".", 1)[0]
        where = self.context[-1] if self.context else "module level"
        self.found.append(Import(self.name, target, self.path, node.lineno, where))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            parts = alias.name.split(".")
            if parts[0] == self.top:
                self._add(parts[1:], node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            up = node.level - 1
            if up > len(self.package):
                return  # beyond the package: not ours
            base = self.package[: len(self.package) - up]
        elif node.module and node.module.split(".")[0] == self.top:
            base = []
        else:
            return  # the standard library or a third-party package
        named = node.module.split(".") if node.module else []
        if not node.level:
            named = named[1:]
        base = base + named
        for alias in node.names:
            candidate = ".".join([*base, alias.name])
            if candidate in self.modules and alias.name != "*":
                self._add([*base, alias.name], node)
            else:
                self._add(base, node)


def all_imports(root: Path = ROOT) -> list[Import]:
    """Every import of a package module by another, in the package at ``root``."""
    modules = package_modules(root)
    found = []
    for name, path in modules.items():
        shown = f"{root.name}/{path.relative_to(root).as_posix()}"
        collector = _Collector(root.name, name, shown, modules)
        collector.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        found.extend(collector.found)
    return found


def entry_of(module: str, listed: list[str]) -> str | None:
    """The list entry that places ``module``: itself, or the closest listed
    package above it (``testing`` for ``testing._proxy``)."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in listed:
            return prefix
    return None


def facade_rank(imports: list[Import], listed: list[str]) -> float:
    """Where the façade stands: just above the last listed module it imports
    (above everything if it imports a module the list does not name)."""
    rank: dict[str | None, float] = {name: i for i, name in enumerate(listed)}
    ranks = [
        rank.get(entry_of(imp.target, listed), math.inf)
        for imp in imports
        if imp.importer == "__init__"
    ]
    return max(ranks, default=-1) + 0.5


def violations(imports: list[Import], listed: list[str]) -> list[str]:
    """What goes up the list, by file and line, each import once."""
    facade = facade_rank(imports, listed)
    found = {
        imp: v for imp in imports if (v := violation(imp, listed, facade)) is not None
    }
    return [found[imp] for imp in sorted(found, key=lambda i: (i.path, i.line))]


def violation(imp: Import, listed: list[str], facade: float) -> str | None:
    """Why ``imp`` goes up the list, or None if it does not. ``facade``: the
    rank of ``__init__`` (:func:`facade_rank`)."""
    if imp.importer == "__init__":
        return None
    rank = {name: i for i, name in enumerate(listed)}
    importer = entry_of(imp.importer, listed)
    if importer is None:
        return None  # not listed: above everything
    if imp.target == "__init__":
        if rank[importer] > facade:
            return None
        last = listed[int(facade)] if facade < len(listed) else None
        return f"{imp}: the package façade imports " + (
            f"modules up to {last} (#{int(facade) + 1}), so only a module "
            "listed after it may import the façade"
            if last is not None
            else "a module the list does not name, so no listed module may "
            "import the façade"
        )
    target = entry_of(imp.target, listed)
    if target is None:
        return f"{imp}: {imp.target} is not in the list (so above everything)"
    if target == importer:
        return None  # within one entry (a listed subpackage)
    if rank[target] < rank[importer]:
        return None
    return (
        f"{imp}: {target} is listed after {importer} "
        f"(#{rank[target] + 1} vs #{rank[importer] + 1})"
    )


def test_the_layering_list_names_every_package_module() -> None:
    """Every module and subpackage at the top of the package has an entry (a
    subpackage's entry covers its modules, unless they have their own), and
    every entry names a module that exists."""
    modules = package_modules()
    listed = layering_list()
    missing = sorted(
        name
        for name in modules
        if name not in EXEMPT and entry_of(name, listed) is None
    )
    stale = [name for name in listed if name not in modules]
    problems = [
        *(
            f"{PACKAGE}/{modules[n].relative_to(ROOT)}: {n} is missing from the "
            "layering list in the docstring of __init__.py"
            for n in missing
        ),
        *(
            f"the layering list names {n}, which is not a module of {PACKAGE}"
            for n in stale
        ),
    ]
    assert not problems, "\n".join(problems)


def test_imports_flow_down_the_layering_list() -> None:
    """No module imports one listed after it, at module level, inside a
    function or under TYPE_CHECKING (so the list is also free of cycles)."""
    listed = layering_list()
    problems = violations(all_imports(), listed)
    assert not problems, (
        f"{len(problems)} import(s) up the layering list in the docstring of "
        f"{PACKAGE}/__init__.py:\n" + "\n".join(problems)
    )


FAKE_INIT = '''"""A package.

Layering:

- ``_base``: the bottom.
- ``_sub/low``: a subpackage module with an entry of its own.
- ``_mid``: in the middle.
- ``_sub``: the rest of the subpackage.
- ``_top``: the top.
- ``__main__``: the command line, above the façade.
"""

from ._top import Top
'''

FAKE_FILES = {
    "__init__.py": FAKE_INIT,
    "__main__.py": "from . import Top\nfrom ._demo import run\n",
    "_base.py": "import asyncio\nimport redis\n",
    "_mid.py": (
        "from ._base import X\nfrom ._sub import low\nfrom redlock_fake import Top\n"
    ),
    "_top.py": (
        "from typing import TYPE_CHECKING\n"
        "from . import _mid, _base\n"
        "import redlock_fake._sub.more\n"
        "if TYPE_CHECKING:\n"
        "    from ._demo import Options\n"
    ),
    "_demo.py": "from ._top import Top\nfrom redlock_fake import Top\n",
    "_sub/__init__.py": "from .more import M\nfrom .low import L\n",
    "_sub/low.py": (
        "from .._base import X\n"
        "def f():\n"
        "    from .._mid import Y\n"
        "    from . import more\n"
    ),
    "_sub/more.py": "from .low import L\nfrom redlock_fake._top import Top\n",
}


def test_the_checker_on_a_made_up_package(tmp_path: Path) -> None:
    """The checker itself, on a package whose violations are known: relative,
    absolute, function-level, TYPE_CHECKING and subpackage imports; a
    subpackage module listed as ``_sub/low``; unlisted modules above
    everything; the façade free to import anything."""
    root = tmp_path / "redlock_fake"
    for name, text in FAKE_FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    listed = layering_list(root)
    assert listed == ["_base", "_sub.low", "_mid", "_sub", "_top", "__main__"]
    assert sorted(package_modules(root)) == [
        "__init__",
        "__main__",
        "_base",
        "_demo",
        "_mid",
        "_sub",
        "_sub.low",
        "_sub.more",
        "_top",
    ]
    assert entry_of("_sub.more", listed) == "_sub"
    assert entry_of("_sub.low", listed) == "_sub.low"
    assert entry_of("_demo", listed) is None
    imports = all_imports(root)
    assert {(i.importer, i.target, i.where) for i in imports} == {
        ("__init__", "_top", "module level"),
        ("__main__", "__init__", "module level"),
        ("__main__", "_demo", "module level"),
        ("_mid", "_base", "module level"),
        ("_mid", "_sub.low", "module level"),
        ("_mid", "__init__", "module level"),
        ("_top", "_mid", "module level"),
        ("_top", "_base", "module level"),
        ("_top", "_sub.more", "module level"),
        ("_top", "_demo", "under TYPE_CHECKING"),
        ("_demo", "_top", "module level"),
        ("_demo", "__init__", "module level"),
        ("_sub", "_sub.more", "module level"),
        ("_sub", "_sub.low", "module level"),
        ("_sub.low", "_base", "module level"),
        ("_sub.low", "_mid", "in a function"),
        ("_sub.low", "_sub.more", "in a function"),
        ("_sub.more", "_sub.low", "module level"),
        ("_sub.more", "_top", "module level"),
    }
    problems = violations(imports, listed)
    assert problems == [
        (
            "redlock_fake/__main__.py:2: __main__ imports _demo (module level): "
            "_demo is not in the list (so above everything)"
        ),
        (
            "redlock_fake/_mid.py:3: _mid imports __init__ (module level): "
            "the package façade imports modules up to _top (#5), so only a "
            "module listed after it may import the façade"
        ),
        (
            "redlock_fake/_sub/low.py:3: _sub.low imports _mid (in a function): "
            "_mid is listed after _sub.low (#3 vs #2)"
        ),
        (
            "redlock_fake/_sub/low.py:4: _sub.low imports _sub.more (in a function): "
            "_sub is listed after _sub.low (#4 vs #2)"
        ),
        (
            "redlock_fake/_sub/more.py:2: _sub.more imports _top (module level): "
            "_top is listed after _sub (#5 vs #4)"
        ),
        (
            "redlock_fake/_top.py:5: _top imports _demo (under TYPE_CHECKING): "
            "_demo is not in the list (so above everything)"
        ),
    ]
