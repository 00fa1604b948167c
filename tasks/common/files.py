"""Which files of a user's folder may be opened: regular files inside it. Shared by ingest and batch scoring."""

from __future__ import annotations

import stat
from pathlib import Path


def readable(path: Path, folder: Path) -> bool:
    """A regular file, or a symlink to one inside `folder`: never a FIFO or a device (reading one blocks for ever or
    never ends: `x.png` → /dev/zero), nor a link out of the folder (`x.png` → /etc/passwd), nor a dangling link."""
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # follows links: what would be read
            return False
        return not path.is_symlink() or path.resolve().is_relative_to(folder.resolve())
    except OSError:  # dangling, or unreadable
        return False
