"""What a test session makes once and every pytest-xdist worker shares: a folder built by the first worker that
asks for it, while the others wait on a file lock, then read it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

from filelock import FileLock


def made_once(tmp_path_factory, name: str, make: Callable[[Path], None]) -> Path:
    """The folder `name`, filled by `make(folder)` once per test run (not once per xdist worker)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # pytest-N/, above each worker's popen-gwK/
    folder = root / name
    with FileLock(str(root / f"{name}.lock")):
        if not (folder / ".made").is_file():
            shutil.rmtree(folder, ignore_errors=True)  # a worker that failed to make it left it half made
            folder.mkdir()
            make(folder)
            (folder / ".made").touch()
    return folder
