"""Stage `ingest`: take the configured source in as the raw data version.

The code is in stage.py (the core and its shell) and the modules beside it; this file only re-exports it.
"""

from tasks.ingest.stage import (
    TABLE_FILE,
    IngestResult,
    ingest,
    pixel_scale,
    run,
)

__all__ = ["TABLE_FILE", "IngestResult", "ingest", "pixel_scale", "run"]
