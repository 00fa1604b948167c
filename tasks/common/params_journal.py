"""A run's overrides can never outlive it: params.yaml is overridden only with a journal beside it, and whatever
starts next (a pipeline run, a stage under `dvc repro`, a sweep) puts back a file that a killed run left overridden.

A run with overrides (`mlops run --set ...`, a deployment's `overrides`, a sweep's pick) writes, in this order, each
durably (fsync'd, renamed into place): the journal `.params.yaml.journal` (the user's exact bytes, and a digest of
the overridden text), then the overridden params.yaml; when the run ends, however it ends short of a kill, the
user's bytes go back and then the journal goes. A SIGKILL, an OOM kill or a power cut between the two leaves the
journal, and `recover` at the next start restores the file byte for byte and says so, unless the file no longer
holds that run's overrides (the user edited it since): then it is left alone, and the journal goes with a warning.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

JOURNAL = ".params.yaml.journal"
PIPELINE_LOCK = ".pipeline.lock"  # held by a pipeline run for its whole length (flows/pipeline.py)


def override(params_file: Path, text: str, overrides: dict) -> None:
    """params.yaml becomes `text`, the user's bytes kept in the journal first."""
    original = params_file.read_bytes()
    _durable(params_file.parent / JOURNAL, json.dumps({
        "original": original.decode("utf-8", "surrogateescape"), "overridden_md5": _md5(text.encode()),
        "overrides": overrides, "pid": os.getpid()}).encode())
    _durable(params_file, text.encode())


def restore(params_file: Path) -> None:
    """The user's bytes back in params.yaml, then the journal removed (a kill between the two: `recover` redoes it)."""
    journal = params_file.parent / JOURNAL
    entry = json.loads(journal.read_text())
    _durable(params_file, entry["original"].encode("utf-8", "surrogateescape"))
    journal.unlink()
    _sync_dir(params_file.parent)


def recover(root: Path, lock_held: bool = False) -> str | None:
    """At the start of a run: put params.yaml back from a journal a killed run left, and say what was done (None when
    there was nothing to do). Not while another pipeline run holds the workspace (the journal is that run's);
    `lock_held`: the caller holds it."""
    journal = root / JOURNAL
    if not journal.is_file() or (not lock_held and _busy(root)):
        return None
    params_file = root / "params.yaml"
    entry = json.loads(journal.read_text())
    overrides = json.dumps(entry.get("overrides", {}))
    if params_file.is_file() and _md5(params_file.read_bytes()) != entry["overridden_md5"]:
        journal.unlink()
        said = (f"params.yaml: a run killed with the overrides {overrides} left a journal ({journal}), but the file "
                "changed since: it is left as it is, and the journal removed")
    else:
        restore(params_file)
        said = (f"params.yaml restored byte for byte: a run with the overrides {overrides} was killed before it "
                f"could put it back (journal {journal.name})")
    return said  # the caller says it, once, where its user looks (a command's output, a flow's or a stage's log)


def _busy(root: Path) -> bool:
    from filelock import FileLock, Timeout

    try:
        with FileLock(str(root / PIPELINE_LOCK)).acquire(timeout=0):
            return False
    except Timeout:
        return True


def _durable(target: Path, data: bytes) -> None:
    """`data` under `target`, complete or not at all, on disk before this returns (file and folder fsync'd)."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    _sync_dir(target.parent)


def _sync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()
