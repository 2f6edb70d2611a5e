"""The public API is fully annotated, and its annotations resolve (issue 12, "Habits").

Public means: every function in ``mcroute.__all__``, and for every class in it each public
method, classmethod, staticmethod and property defined on the class or on a base class of this
package (private mixins such as ``Deployment``'s included; bases outside mcroute, e.g.
``ValueError``, are not ours to annotate), plus the class's ``__init__`` when it is Python code
of this package (dataclass-generated ones are annotated by their fields and checked too).

Modules import names used only in annotations under ``if TYPE_CHECKING:`` so ``import
mcroute`` stays lazy; ``typing.get_type_hints`` evaluates the annotation strings in the
module's globals, where those names are absent. The check therefore runs each module's
``if TYPE_CHECKING:`` blocks (parsed from its source) into a copy of its globals and resolves
in that namespace: a name used in an annotation but imported neither at run time nor under
TYPE_CHECKING still fails, as does a misspelt or non-existent attribute.
"""

from __future__ import annotations

import ast
import functools
import inspect
import sys
import typing

import pytest

import mcroute as mr


def _is_ours(obj) -> bool:
    return getattr(obj, "__module__", "").split(".")[0] == "mcroute"


def _public_api() -> list[tuple[str, object]]:
    """(qualified name, function) for every public callable reached from mcroute.__all__."""
    out: dict[str, object] = {}
    for name in mr.__all__:
        obj = getattr(mr, name)
        if inspect.isfunction(obj):
            out[name] = obj
        if not inspect.isclass(obj):
            continue
        init = obj.__init__
        if inspect.isfunction(init) and _is_ours(init):
            out[f"{name}.__init__"] = init
        for klass in reversed(obj.__mro__):  # subclasses override their bases
            if not _is_ours(klass):
                continue
            for member, f in vars(klass).items():
                if member.startswith("_"):
                    continue
                if isinstance(f, (staticmethod, classmethod)):
                    f = f.__func__
                elif isinstance(f, property):
                    f = f.fget
                if inspect.isfunction(f):
                    out[f"{name}.{member}"] = f
    return sorted(out.items())


API = _public_api()


def test_api_is_found():
    # The walk reaches functions, hand-written __init__s, inherited mixin methods, properties
    # and classmethods (a silent empty walk would pass every test below).
    names = dict(API)
    for qn in ("sample_counts", "Zipf.__init__", "Deployment.step_time",
               "Deployment.max_batch_size", "Correlated.base", "ModelSpec.from_dict",
               "Trace.layer_map"):
        assert qn in names, qn
    assert len(API) > 150


@pytest.mark.parametrize(("qualname", "func"), API, ids=[qn for qn, _ in API])
def test_fully_annotated(qualname, func):
    sig = inspect.signature(func)
    missing = [p for p, par in sig.parameters.items()
               if p not in ("self", "cls") and par.annotation is inspect.Parameter.empty]
    assert not missing, f"{qualname}: parameters without annotation: {missing}"
    assert sig.return_annotation is not inspect.Signature.empty, \
        f"{qualname}: no return annotation"


#: Packages of optional extras (pyproject.toml) that annotations may name: without them
#: installed, the resolution of the functions that use them is skipped, not failed.
OPTIONAL = {"distributed", "dask", "matplotlib"}


@functools.cache
def _annotation_namespace(module_name: str) -> tuple[dict, tuple[str, ...]]:
    """The module's globals plus what its ``if TYPE_CHECKING:`` blocks import.

    Also the names those blocks would bind from optional packages that are not installed.
    """
    module = sys.modules[module_name]
    ns = dict(vars(module))
    missing = []
    tree = ast.parse(inspect.getsource(module))
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and (
                (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
                or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")):
            for stmt in node.body:
                code = compile(ast.Module(body=[stmt], type_ignores=[]), module.__file__, "exec")
                try:
                    exec(code, ns)
                except ModuleNotFoundError as exc:
                    if (exc.name or "").split(".")[0] not in OPTIONAL:
                        raise
                    missing += [(a.asname or a.name).split(".")[0] for a in stmt.names]
    return ns, tuple(missing)


@pytest.mark.parametrize(("qualname", "func"), API, ids=[qn for qn, _ in API])
def test_annotations_resolve(qualname, func):
    ns, missing = _annotation_namespace(func.__module__)
    used = {n.id for a in func.__annotations__.values() if isinstance(a, str)
            for n in ast.walk(ast.parse(a, mode="eval")) if isinstance(n, ast.Name)}
    if used & set(missing):
        pytest.skip(f"annotations name {sorted(used & set(missing))} of an optional "
                    "dependency that is not installed")
    hints = typing.get_type_hints(func, globalns=ns)
    params = [p for p in inspect.signature(func).parameters if p not in ("self", "cls")]
    assert set(params) | {"return"} <= set(hints), qualname
