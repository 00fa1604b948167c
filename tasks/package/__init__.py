"""Stage `package`: the chosen model into the BentoML model store, with its lineage, and a Bento built from bento/.

The code is in stage.py (the core and its shell) and the modules beside it; this file only re-exports it, on
first use (tasks/common/exports.py), so that `python -m tasks.package` can hand its run to the warm host first.
"""

from typing import TYPE_CHECKING

from tasks.common.exports import on_first_use

if TYPE_CHECKING:  # (what type checkers and the import graph in tests/ read)
    from tasks.package.stage import PackageResult, package, build_bento, shipped_files, run

__all__ = ["PackageResult", "package", "build_bento", "shipped_files", "run"]
__getattr__ = on_first_use(__name__, "stage", __all__)
