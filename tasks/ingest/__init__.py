"""Stage `ingest`: take the configured source in as the raw data version.

The code is in stage.py (the core and its shell) and the modules beside it; this file only re-exports it, on
first use (tasks/common/exports.py), so that `python -m tasks.ingest` can hand its run to the warm host first.
"""

from typing import TYPE_CHECKING

from tasks.common.exports import on_first_use

if TYPE_CHECKING:  # (what type checkers and the import graph in tests/ read)
    from tasks.ingest.stage import TABLE_FILE, IngestResult, ingest, pixel_scale, run

__all__ = ["TABLE_FILE", "IngestResult", "ingest", "pixel_scale", "run"]
__getattr__ = on_first_use(__name__, "stage", __all__)
