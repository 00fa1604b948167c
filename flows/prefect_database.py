"""A new Prefect database without the wait: `make install` migrates an empty one once (`python -m
flows.prefect_database`), and a project's server that has no database yet starts on a copy of it.

A Prefect server on a missing database first runs Prefect's migrations, every one since its first release: 7 s on 2
cores, on the critical path of a new project's first `mlops run` (its server boots while the run waits). The
migrated database holds nothing but its schema and Alembic's revision, so a copy is the same database, and the
server still runs its migrations on start (none left to run on the copy). The copy is kept in this environment
(`<venv>/share/mlops-pipeline/`), named by the Prefect version that migrated it: another Prefect finds none and
migrates as before.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

DATABASE = "prefect.db"  # Prefect's name for its SQLite database in PREFECT_HOME


def template_path() -> Path:
    """Where this environment keeps the empty database migrated by its Prefect version."""
    from importlib.metadata import version

    return Path(sys.prefix) / "share" / "mlops-pipeline" / f"prefect-{version('prefect')}-empty.db"


def seed(home: Path) -> bool:
    """Give `home` (a server's PREFECT_HOME, which has no database yet) a copy of the migrated empty database;
    whether it did. Never replaces a database: a copy appears whole under its name, or not at all."""
    target = home / DATABASE
    template = template_path()
    elsewhere = any(os.environ.get(f"PREFECT_{part}_DATABASE_CONNECTION_URL") for part in ("API", "SERVER"))
    if elsewhere or target.exists() or not template.is_file():  # (a server given a database URL does not use it)
        return False
    home.mkdir(parents=True, exist_ok=True)
    partial = home / f".{DATABASE}.{os.getpid()}.tmp"
    partial.unlink(missing_ok=True)  # a killed copy's (pids are reused)
    try:
        os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the mode SQLite gives a new one
        _copy(template, partial)
        os.link(partial, target)  # fails if a database appeared meanwhile: that one stays
    except FileExistsError:
        return False
    finally:
        partial.unlink(missing_ok=True)
    return True


def build() -> Path:
    """Migrate an empty database with this environment's Prefect (`prefect server database upgrade`) into
    `template_path()`, replacing none that is there."""
    template = template_path()
    if template.is_file():
        return template
    template.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=template.parent, prefix=".prefect-home-") as home:
        env = {key: value for key, value in os.environ.items()
               if not key.startswith("PREFECT_API_DATABASE") and not key.startswith("PREFECT_SERVER_DATABASE")}
        env.update(PREFECT_HOME=home, PREFECT_SERVER_ANALYTICS_ENABLED="false")
        subprocess.run([sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"], env=env,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True)
        partial = Path(home) / "template.db"
        _copy(Path(home) / DATABASE, partial)
        os.replace(partial, template)
    return template


def _copy(source: Path, target: Path) -> None:
    """A consistent copy of the SQLite database `source` (its write-ahead log included), written to disk."""
    src, dst = sqlite3.connect(source), sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
    with target.open("rb+") as handle:
        os.fsync(handle.fileno())


if __name__ == "__main__":
    print(f"an empty Prefect database for new projects' servers: {build()}")
