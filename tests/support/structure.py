"""The project's own import graph, read from the source (no import is executed): what a stage's code depends on."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROJECT_PACKAGES = {"tasks", "jobs", "flows", "bento", "cli", "benchmarks"}


def module_file(module: str, root: Path = REPO) -> Path | None:
    """The file Python runs for `module` inside the project, if it is one of ours."""
    base = root.joinpath(*module.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path, root: Path = REPO) -> set[str]:
    """Every project module `path` imports, at the top or inside a function, with the packages above each."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(root).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # kept only where it is a module
    modules = set()
    for name in found:
        parts = name.split(".")
        if parts[0] in PROJECT_PACKAGES:
            modules.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return {m for m in modules if module_file(m, root)}


def closure(entry_module: str, root: Path = REPO) -> set[Path]:
    """The files `python -m <entry_module>` can execute from the project: the module (its `__main__` for a
    package), the packages above it, and everything they import, recursively."""
    parts = entry_module.split(".")
    start = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    if (root.joinpath(*parts) / "__main__.py").is_file():
        start.add(f"{entry_module}.__main__")
    seen: set[str] = set()
    todo = [m for m in start if module_file(m, root)]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo.extend(imported_modules(module_file(module, root), root) - seen)
    return {module_file(m, root) for m in seen}
