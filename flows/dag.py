"""The stages of dvc.yaml in run order, read from DVC itself so the flow never keeps a second copy of the DAG."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StageRun:
    stage: str
    executed: bool
    seconds: float


PERMANENT_ERRORS = {"ConfigError", "DataError", "ValidationFailed", "PromotionError"}  # tasks/errors.py: retrying cannot help


class StageFailed(RuntimeError):
    """A stage command exited non-zero; the message carries the stage name and its last error lines."""

    def __init__(self, message: str, error: str = "") -> None:
        super().__init__(message)
        self.error = error  # the pipeline error's class name when the stage reported one

    @property
    def transient(self) -> bool:
        """Worth retrying: not bad data, bad params or a refused promotion (a crash, a kill, a lost connection)."""
        return self.error not in PERMANENT_ERRORS


def stage_order(root: Path) -> list[str]:
    """Stage names in an order that respects every dependency, ties broken by their order in dvc.yaml."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        position = {stage: i for i, stage in enumerate(graph.nodes)}
        ordered = nx.lexicographical_topological_sort(graph.reverse(), key=lambda s: position[s])
        return [stage.addressing for stage in ordered]


def changed_stages(root: Path) -> set[str]:
    """The stages `dvc status` reports as changed (deps, params or outs differ from dvc.lock), in one DVC call."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return {name.split(":")[-1] for name in repo.status()}


def unpushed(root: Path) -> bool:
    """Whether the default DVC remote lacks any cached output (what `dvc push` would send)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return any(repo.status(cloud=True).values())


def repro_stage(root: Path, stage: str, extra_env: dict[str, str] | None = None) -> StageRun:
    """`dvc repro --single-item <stage>`: DVC decides whether it is up to date, exactly as `dvc repro` would."""
    import time

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           **(extra_env or {})}
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro", "--single-item", stage], cwd=root, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
    )
    lines = []
    try:
        for line in proc.stdout:
            sys.stdout.write(line)
            lines.append(line.rstrip())
        proc.wait()
    finally:
        if proc.poll() is None:  # interrupted (a Prefect timeout, Ctrl-C): the stage must not run on unseen
            proc.kill()
            proc.wait()
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        reported = [l for l in lines if l.startswith("error in stage")]
        reasons = reported or [l for l in lines if l.startswith("ERROR")] or lines[-5:]
        error = reported[0].split(": ", 2)[1] if reported and reported[0].count(": ") >= 2 else ""
        raise StageFailed(f"stage '{stage}' failed (exit {proc.returncode}): " + " | ".join(reasons), error)
    skipped = any(f"Stage '{stage}' didn't change, skipping" in l for l in lines)
    return StageRun(stage, executed=not skipped, seconds=seconds)


def push_data(root: Path) -> None:
    """Push every DVC-cached output (the raw and prepared data versions, models) to the default remote."""
    subprocess.run([sys.executable, "-m", "dvc", "push", "-q"], cwd=root, check=True)
