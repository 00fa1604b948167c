"""The layout keeps its promises: every stage's dvc.yaml deps cover exactly the code it can run (so DVC never
skips a stage whose code changed, and never re-runs one for code it does not use), every config field is written
in params.yaml, and the service's build arguments are the `package` section."""

from __future__ import annotations

import ast
import importlib
import shlex
import subprocess
import sys

import pytest
import yaml

from tests.support.structure import REPO, closure, imported_modules

DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
CODE_ROOTS = ("tasks", "jobs", "flows", "bento", "cli")


def _entry_module(stage: str) -> str:
    program, flag, module, *_ = shlex.split(DVC[stage]["cmd"])
    assert (program, flag) == ("python", "-m"), f"stage {stage}: expected `python -m <module>`, found {DVC[stage]['cmd']}"
    return module


def _code_deps(stage: str) -> list[str]:
    return [dep for dep in DVC[stage]["deps"] if dep.split("/")[0] in CODE_ROOTS]


def _covered(rel: str, deps: list[str]) -> bool:
    return any(rel == dep or rel.startswith(dep.rstrip("/") + "/") for dep in deps)


def _shipped(stage: str) -> set[str]:
    """Files a stage reads as data rather than importing: the Bento's sources, for `package`."""
    if stage != "package":
        return set()
    from tasks.package import shipped_files

    return {*shipped_files(REPO / "bento"), "bento/bentofile.yaml"}


@pytest.mark.parametrize("stage", list(DVC))
def test_a_stages_deps_cover_every_module_its_command_can_import(stage):
    files = {str(p.relative_to(REPO)) for p in closure(_entry_module(stage))}
    missing = sorted(f for f in files if not _covered(f, DVC[stage]["deps"]))
    assert not missing, f"dvc.yaml stage {stage} imports {missing} but does not list them (or a folder above) in deps"


@pytest.mark.parametrize("stage", list(DVC))
def test_a_stage_depends_on_no_code_it_does_not_run(stage):
    files = {str(p.relative_to(REPO)) for p in closure(_entry_module(stage))} | _shipped(stage)
    unused = [dep for dep in _code_deps(stage) if not any(_covered(f, [dep]) for f in files)]
    assert not unused, f"dvc.yaml stage {stage} depends on {unused}, which its command never imports"
    assert not any(f.startswith(("cli/", "flows/", "jobs/")) for f in files), "a stage imports a command, a flow or a job"


# Who may import whom: a package imports its own layer and the layers below, never one above. tasks/ (the stages
# and what they share) and bento/ (the service and the serving front, which stages build and start) are the
# bottom; jobs/ (scoring, sweeps, operations) use them; flows/ (Prefect) orchestrate all three; cli/ is the top.
LAYERS = {"tasks": 0, "bento": 0, "jobs": 1, "flows": 2, "cli": 3}


@pytest.mark.parametrize("package", list(LAYERS))
def test_no_import_runs_upward(package):
    upward = sorted(f"{path.relative_to(REPO)} imports {module}"
                    for path in (REPO / package).rglob("*.py")
                    for module in imported_modules(path)
                    if module.split(".")[0] in LAYERS and LAYERS[module.split(".")[0]] > LAYERS[package])
    assert not upward, f"imports that run upward (tasks, bento < jobs < flows < cli): {upward}"


def test_the_closure_follows_imports_inside_functions(tmp_path):
    """The check above is only as good as the import reader: a lazy import must count."""
    (tmp_path / "tasks" / "demo").mkdir(parents=True)
    (tmp_path / "tasks" / "__init__.py").write_text("")
    (tmp_path / "tasks" / "demo" / "__init__.py").write_text("def run():\n    from tasks.helper import x\n")
    (tmp_path / "tasks" / "demo" / "__main__.py").write_text("from tasks.demo import run\n")
    (tmp_path / "tasks" / "helper.py").write_text("import json\nfrom tasks import other\n")
    (tmp_path / "tasks" / "other.py").write_text("")
    found = {str(p.relative_to(tmp_path)) for p in closure("tasks.demo", tmp_path)}
    assert found == {"tasks/__init__.py", "tasks/demo/__init__.py", "tasks/demo/__main__.py", "tasks/helper.py",
                     "tasks/other.py"}


def _fields(model, prefix: str = ""):
    """Every leaf field of a params model, as dotted keys, descending into nested sections."""
    from pydantic import BaseModel

    for name, field in model.model_fields.items():
        key = field.alias or name
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _fields(annotation, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def test_every_config_field_is_written_in_params_yaml():
    """params.yaml holds every knob: a default that lives only in code is a knob nobody can find."""
    from tasks.common.config import Params

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    missing = []
    for dotted in _fields(Params):
        node = raw
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                missing.append(dotted)
                break
            node = node[part]
    assert not missing, f"config fields with no value in params.yaml: {missing}"


def test_the_services_build_arguments_are_the_package_section():
    """Same names, same defaults: bento/service/build.py's ServiceArgs (read from its source: importing it needs a model)
    against PackageParams, so a knob added to one and not the other fails here."""
    from tasks.common.config import Params

    tree = ast.parse((REPO / "bento/service/build.py").read_text())
    service_args = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ServiceArgs")
    declared = {node.target.id: ast.literal_eval(node.value) for node in service_args.body
                if isinstance(node, ast.AnnAssign)}
    declared.pop("model_tag")  # the package stage's, not a param
    expected = {k: (list(v) if isinstance(v, tuple) else v) for k, v in Params().package.build_args().items()}
    assert declared == expected


def test_the_front_and_the_service_name_the_same_warm_up_token_variable():
    """Read from the source: the front sets it for each Bento it starts, the service's guard reads it."""
    def constant(path: str) -> str:
        tree = ast.parse((REPO / path).read_text())
        return next(ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                    and any(getattr(t, "id", "") == "WARM_UP_TOKEN_ENV" for t in node.targets))

    assert constant("bento/front/supervisor.py") == constant("bento/service/guard.py") == "BENTO_WARM_UP_TOKEN"


MAX_FUNCTION_LINES = 60


def test_stage_code_lives_in_named_modules_and_no_function_is_long():
    """tasks/<stage>/__init__.py only re-exports (the code is in modules named for what they hold), and no function
    in tasks/ or jobs/ runs over MAX_FUNCTION_LINES lines: a newcomer reads one thing at a time."""
    stages = [path.parent.name for path in (REPO / "tasks").glob("*/__main__.py")]
    assert len(stages) == len(DVC)
    for stage in stages:
        tree = ast.parse((REPO / "tasks" / stage / "__init__.py").read_text())
        code = [node for node in tree.body if not isinstance(node, (ast.Expr, ast.ImportFrom, ast.Assign))
                and not _type_checking_imports(node)]
        assert not code, f"tasks/{stage}/__init__.py holds code ({[type(n).__name__ for n in code]}), not re-exports"
    long = [f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for package in ("tasks", "jobs") for path in sorted((REPO / package).rglob("*.py"))
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def _type_checking_imports(node: ast.stmt) -> bool:
    """`if TYPE_CHECKING:` holding imports only: the names a package re-exports on first use, for type checkers."""
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
            and not node.orelse and all(isinstance(n, ast.ImportFrom) for n in node.body))


def test_a_stage_command_imports_none_of_its_stage_before_it_can_hand_off_and_every_name_is_re_exported():
    """`python -m tasks.<stage>` imports the package first: it must not pull in the stage's code (NumPy, pandas, the
    stage's helpers: 0.2-0.6 s a stage) before the command hands its run to the warm host; and every name the
    package lists is the stage module's own, the same as the type checkers' import says."""
    stages = sorted(path.parent.name for path in (REPO / "tasks").glob("*/__main__.py"))
    probe = ("import sys, tasks.{0}; print(','.join(sorted(m for m in sys.modules "
             "if m.startswith(('tasks.{0}.', 'numpy', 'pandas')))))")
    for stage in stages:
        done = subprocess.run([sys.executable, "-c", probe.format(stage)], cwd=REPO, capture_output=True, text=True)
        assert done.returncode == 0 and done.stdout.strip() == "", (stage, done.stdout, done.stderr[-2000:])
        package, module = importlib.import_module(f"tasks.{stage}"), importlib.import_module(f"tasks.{stage}.stage")
        tree = ast.parse((REPO / "tasks" / stage / "__init__.py").read_text())
        typed = {alias.name for node in tree.body if _type_checking_imports(node) for n in node.body
                 for alias in n.names}
        assert typed == set(package.__all__), (stage, typed ^ set(package.__all__))
        for name in package.__all__:
            assert getattr(package, name) is getattr(module, name), (stage, name)
        with pytest.raises(AttributeError, match="no attribute"):
            package.not_a_name  # noqa: B018


def _layout_map() -> dict[str, str]:
    """README's Layout block: each entry's folder (a line that starts with one) and its description."""
    import re

    readme = (REPO / "README.md").read_text()
    block = re.search(r"## Layout\n.*?```\n(.*?)```", readme, re.S).group(1)
    entries: dict[str, str] = {}
    folder = None
    for line in block.splitlines():
        match = re.match(r"(\S+/)\s+(.*)", line)
        if match:
            folder = match.group(1)
            entries[folder] = match.group(2)
        elif folder and line.startswith(" "):
            entries[folder] += " " + line.strip()
    return entries


def test_the_readmes_layout_map_matches_the_tree():
    """Every folder the map names exists and every module it names is in that folder; every package of the project
    (and every sub-package of tasks/, bento/ and jobs/) is on the map."""
    import re

    entries = _layout_map()
    for folder, text in entries.items():
        base = REPO / folder.split("<")[0]
        assert base.is_dir(), f"README layout: {folder} does not exist"
        for module in re.findall(r"\b([a-z_]+\.py)\b", text):
            assert any(base.rglob(module)), f"README layout: {folder} names {module}, which is not in it"
    named = " ".join([*entries, *entries.values()])
    packages = [p.parent for p in REPO.glob("*/__init__.py")] + [p.parent for top in ("tasks", "bento", "jobs")
                                                                for p in (REPO / top).glob("*/__init__.py")]
    stages = {path.parent for path in (REPO / "tasks").glob("*/__main__.py")}
    missing = [str(p.relative_to(REPO)) for p in packages
               if p not in stages and f"{p.relative_to(REPO)}/" not in named and f"{p.name}/" not in named]
    assert not missing, f"packages the README's layout map does not mention: {missing}"
