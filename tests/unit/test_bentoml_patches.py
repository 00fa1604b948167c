"""The BentoML internals the service replaces (bento/service/patches.py) are all there in the installed BentoML, a
changed one is named, and no other module of the service replaces anything of BentoML's."""

from __future__ import annotations

import ast
import importlib.util
import sys

import pytest

from tests.support.structure import REPO


def _patches():
    """bento/service/patches.py alone: the package's __init__ resolves a stored model at import."""
    spec = importlib.util.spec_from_file_location("patches_under_test", REPO / "bento/service/patches.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_replaced_internal_exists_with_what_its_replacement_uses():
    _patches().check()


@pytest.mark.parametrize(("internal", "named"), [
    (("bentoml._internal.server.http.traffic", "MaxConcurrencyMiddleware", ("self._renamed",)),
     "bentoml._internal.server.http.traffic.MaxConcurrencyMiddleware no longer sets or reads self._renamed"),
    (("bentoml._internal.marshal.dispatcher", "OptimizerV2", ()), "dispatcher.OptimizerV2 is gone"),
    (("bentoml._internal.marshal.dispatcher_v2", "Optimizer", ()), "cannot be imported"),
    (("_bentoml_impl.serde", "ALL_SERDE", ("application/x-new",)), "has no entry 'application/x-new'"),
    (("_bentoml_impl.serde", "JSONSerde", ("parse_body",)), "has no attribute 'parse_body'"),
])
def test_a_changed_internal_fails_naming_it(internal, named):
    patches = _patches()
    with pytest.raises(patches.BentoMLChanged, match="BentoML 1") as raised:
        patches.check((patches.Internal(*internal, why="a test"),))
    assert named in str(raised.value) and "bento/service/patches.py" in str(raised.value)


def _bentoml_names(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("bentoml", "_bentoml_impl",
                                                                                         "_bentoml_sdk"):
            names.update(alias.asname or alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update((a.asname or a.name).split(".")[0] for a in node.names if a.name.startswith("bentoml"))
    return names


def _root(node: ast.AST) -> str:
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else ""


def test_only_patches_py_replaces_anything_of_bentomls():
    found = []
    for path in sorted((REPO / "bento").rglob("*.py")):
        if path.name == "patches.py":
            continue
        tree = ast.parse(path.read_text())
        bentoml_names = _bentoml_names(tree)
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, (ast.AugAssign, ast.AnnAssign)) else []
            for target in targets:
                if isinstance(target, (ast.Attribute, ast.Subscript)) and _root(target) in bentoml_names:
                    found.append(f"{path.relative_to(REPO)}:{node.lineno} {ast.unparse(target)}")
    assert not found, f"BentoML internals replaced outside bento/service/patches.py: {found}"
