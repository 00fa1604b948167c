"""A stage package's names, imported from its code on first use.

`python -m tasks.<stage>` (what dvc.yaml runs) imports the package before its `__main__` can hand the run to the
warm host (tasks/common/stage_host.py). A package that imported its stage's code at once made every stage command
import NumPy, pandas and the stage's own helpers first: 0.2 to 0.6 s a stage, in a process that only forwards the
run. `from tasks.<stage> import run` and the other re-exported names work as before.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable


def on_first_use(package: str, module: str, names: list[str]) -> Callable[[str], object]:
    """A module `__getattr__` for `package`: each of `names` is imported from `package.module` when first asked for
    (and kept on the package, so it is looked up once)."""
    def __getattr__(name: str) -> object:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
