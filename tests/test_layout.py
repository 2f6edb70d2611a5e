"""The package layout keeps its floors (README "Layout", issue 12).

Read from the source with ``ast``, nothing is imported:

* every module sits on one floor: kernels (1) < base (2) < array (3) < labeled (4) < front ends (5),
  and imports only from its own floor or below; packages on one floor import each other without
  cycles;
* no private name crosses a package boundary (``from mcroute._cost.deployment import _x`` or
  ``K._x`` on a module of another package);
* below the front ends, imports of mcroute modules sit at the top of the module, not inside
  functions (front ends may load a command's modules lazily, to keep ``mcroute --help`` fast);
* each package's ``__init__`` docstring states its floor and what it may import;
* no module outside the kernels is longer than 700 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "mcroute"

#: Floor of each package (first component below ``mcroute``); top-level modules by name.
FLOORS = {
    "_kernels": 1,
    "_version": 2, "_base": 2,
    "_routing": 3, "_traces": 3, "_cards": 3, "_cost": 3, "_quality": 3, "_twin": 3,
    "_labeled": 4,
    "cli": 5, "sweeps": 5, "bench": 5, "plot": 5,
    "__init__": 6, "__main__": 6,
}

MAX_LINES = 700


def _modules():
    return sorted(p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts)


def _name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["mcroute", *parts])


def _package(dotted: str) -> str:
    """First component below mcroute (the package or top-level module)."""
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _resolve(module_name: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module_name.split(".")
    if not is_pkg:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(path: Path):
    """(line, target module, imported names, inside a function) of every mcroute import."""
    name = _name(path)
    is_pkg = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []

    def visit(node, in_func):
        for child in ast.iter_child_nodes(node):
            f = in_func or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for a in child.names:
                    if a.name.split(".")[0] == "mcroute":
                        out.append((child.lineno, a.name, [], in_func))
            elif isinstance(child, ast.ImportFrom):
                target = _resolve(name, is_pkg, child)
                if target.split(".")[0] == "mcroute":
                    names = [a.name for a in child.names]
                    # `from mcroute._cost import calibration`: the names may be modules
                    out.append((child.lineno, target, names, in_func))
            visit(child, f)

    visit(tree, False)
    return tree, out


MODULES = _modules()
IDS = [str(p.relative_to(ROOT)) for p in MODULES]

def test_every_package_has_a_floor():
    unknown = {_package(_name(p)) for p in MODULES} - set(FLOORS)
    assert not unknown, f"packages without a floor in FLOORS: {sorted(unknown)}"


@pytest.mark.parametrize("path", MODULES, ids=IDS)
def test_imports_go_down_and_keep_private_names_inside(path):
    me = _name(path)
    my_pkg = _package(me)
    my_floor = FLOORS[my_pkg]
    _, imports = _imports(path)
    problems = []
    for line, target, names, in_func in imports:
        targets = [target] if target != "mcroute" else [f"mcroute.{n}" for n in names]
        for t in targets:
            pkg = _package(t)
            if pkg not in FLOORS:
                problems.append(f"line {line}: {t} has no floor")
                continue
            if FLOORS[pkg] > my_floor:
                problems.append(f"line {line}: floor {my_floor} imports {t} (floor {FLOORS[pkg]})")
            if pkg != my_pkg:
                private = [n for n in names if n.startswith("_") and not n.startswith("__")
                           and target != "mcroute"
                           and not t.startswith("mcroute._kernels")]
                if private:
                    problems.append(f"line {line}: private {private} from another package {t}")
        if in_func and my_floor < 5:  # front ends load commands lazily (fast --help)
            problems.append(f"line {line}: import of {target} inside a function")
    assert not problems, f"{me}:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", MODULES, ids=IDS)
def test_no_private_attribute_of_another_package(path):
    """``K._x`` where ``K`` is a module of another package is a private name crossing over."""
    me = _name(path)
    tree, imports = _imports(path)
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = _resolve(me, path.name == "__init__.py", node)
            for a in node.names:
                full = f"{target}.{a.name}"
                if full.split(".")[0] == "mcroute":
                    aliases[a.asname or a.name] = full
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.asname and a.name.startswith("mcroute"):
                    aliases[a.asname] = a.name
    bad = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and _package(aliases[node.value.id]) != _package(me)):
            bad.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
    assert not bad, f"{me}: private names of another package:\n" + "\n".join(bad)


def test_packages_on_one_floor_do_not_import_each_other_in_a_cycle():
    edges = {}
    for path in MODULES:
        me = _package(_name(path))
        for _, target, names, _ in _imports(path)[1]:
            targets = [target] if target != "mcroute" else [f"mcroute.{n}" for n in names]
            for t in targets:
                pkg = _package(t)
                if pkg != me and FLOORS.get(pkg) == FLOORS.get(me):
                    edges.setdefault(me, set()).add(pkg)

    def reach(a, seen):
        for b in edges.get(a, ()):
            if b not in seen:
                seen.add(b)
                reach(b, seen)
        return seen

    cycles = sorted(a for a in edges if a in reach(a, set()))
    assert not cycles, f"import cycles between packages of one floor: {cycles} ({edges})"


@pytest.mark.parametrize("pkg", sorted(p.parent.name for p in ROOT.glob("*/__init__.py")))
def test_package_docstring_states_floor_and_imports(pkg):
    doc = ast.get_docstring(ast.parse((ROOT / pkg / "__init__.py").read_text())) or ""
    assert f"({FLOORS[pkg]})" in doc and "floor" in doc.lower() or "Front end" in doc, doc
    assert "May import" in doc, f"mcroute/{pkg}/__init__.py must say what it may import"


@pytest.mark.parametrize("path", MODULES, ids=IDS)
def test_module_length(path):
    if path.name == "_kernels.py":  # one file for numba's cache
        return
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(ROOT)} has {n} lines (at most {MAX_LINES})"


def test_importlib_only_where_a_loader_is_needed():
    """Modules load each other by ``import``; ``importlib`` is for the lazy public names, the
    CLI's command table and package data only."""
    allowed = {"mcroute", "mcroute.cli.app", "mcroute._base.resources"}
    users = {_name(p) for p in MODULES if "importlib" in p.read_text()}
    assert users <= allowed, sorted(users - allowed)
