"""Stage `package`: the chosen model into the BentoML model store, with its lineage, and a Bento built from bento/.

The code is in stage.py (the core and its shell) and the modules beside it; this file only re-exports it.
"""

from tasks.package.stage import (
    PackageResult,
    package,
    build_bento,
    shipped_files,
    run,
)

__all__ = ["PackageResult", "package", "build_bento", "shipped_files", "run"]
