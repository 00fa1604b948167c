"""The stages of dvc.yaml in run order, read from DVC itself so the flow never keeps a second copy of the DAG."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tasks.common.params_journal import PIPELINE_LOCK as LOCK_FILE  # one pipeline run per workspace


@dataclass(frozen=True)
class StageRun:
    stage: str
    executed: bool
    seconds: float  # the stage's command under `dvc repro`, DVC's checks included
    work_seconds: float = 0.0  # in the stage's own code (tasks/common/stage_cli.py), when it ran


class StageFailed(RuntimeError):
    """A stage command exited non-zero; the message carries the stage name and the reason."""

    def __init__(self, message: str, error: str = "", transient: bool = True) -> None:
        super().__init__(message)
        self.error = error  # the pipeline error's class name when the stage reported one
        self.transient = transient  # worth retrying: the stage's error class says so, or it crashed without one

    def __reduce__(self):  # Prefect pickles task results and exceptions
        return type(self), (str(self), self.error, self.transient)


PIPELINE = "dvc.yaml"  # the DAG. DVC is asked about its stages only, not about every `.dvc` file in the project:
# each scoring run adds one (an hourly job, thousands), and with 2,000 of them DVC's whole-project status took 4.6 s
# and its graph 2.0 s (0.5 and 0.2 s with 27), on every `mlops run`.


def stage_order(root: Path) -> list[str]:
    """dvc.yaml's stage names in an order that respects every dependency, ties broken by their order in dvc.yaml."""
    import networkx as nx
    from dvc.repo import Repo
    from dvc.repo.graph import build_graph
    from dvc.stage import PipelineStage

    with Repo(str(root)) as repo:
        stages = repo.stage.collect(str(Path(root) / PIPELINE))
        graph = build_graph(stages)  # edges point from a stage to the stages it depends on
        position = {stage: i for i, stage in enumerate(stages)}
        ordered = nx.lexicographical_topological_sort(graph.reverse(), key=lambda s: position[s])
        return [stage.addressing for stage in ordered if isinstance(stage, PipelineStage)]


def release_dead_locks(root: Path) -> list[str]:
    """Drop the entries of DVC's stage lock (`.dvc/tmp/rwlock`) left by a process that is gone or a zombie: a `dvc
    repro` killed with its run is still a zombie for a moment (or for good, under an init that does not reap), and
    DVC counts a zombie as alive, so the next run failed with "is busy, it is being blocked by". Call it holding the
    pipeline's own lock. Returns what was dropped."""
    import psutil
    from dvc.fs import localfs
    from dvc.rwlock import _edit_rwlock  # DVC's own editor of that file (its format and its lock); no public one

    def gone(info: dict) -> bool:
        try:
            return psutil.Process(int(info["pid"])).status() == psutil.STATUS_ZOMBIE
        except (psutil.NoSuchProcess, ValueError, KeyError):
            return True

    lock_dir = root / ".dvc" / "tmp"
    if not (lock_dir / "rwlock").is_file():
        return []
    dropped = []
    with _edit_rwlock(str(lock_dir), localfs, False) as lock:
        for path, info in list(lock["write"].items()):
            if gone(info):
                dropped.append(f"{info.get('cmd')} (pid {info.get('pid')}) writing {path}")
                del lock["write"][path]
        for path, infos in list(lock["read"].items()):
            alive = [info for info in infos if not gone(info)]
            dropped += [f"{i.get('cmd')} (pid {i.get('pid')}) reading {path}" for i in infos if i not in alive]
            if alive:
                lock["read"][path] = alive
            else:
                del lock["read"][path]
    return dropped


def changed_stages(root: Path) -> set[str]:
    """The dvc.yaml stages `dvc status dvc.yaml` reports as changed (deps, params or outs differ from dvc.lock), in
    one DVC call (data a `.dvc` file tracks, such as predictions, is not a stage the pipeline runs)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return {name.split(":")[-1] for name in repo.status(targets=[str(Path(root) / PIPELINE)])}


def unpushed(root: Path) -> bool:
    """Whether the default DVC remote lacks any cached output (what `dvc push` would send)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return any(repo.status(cloud=True).values())


def repro_stage(root: Path, stage: str, extra_env: dict[str, str] | None = None) -> StageRun:
    """`dvc repro --single-item <stage>`: DVC decides whether it is up to date, exactly as `dvc repro` would.

    What happened is read from files, not from printed text: the stage's command writes its outcome
    (tasks/common/stage_cli.py) to a file named here, and the stage ran (or DVC restored its outputs from the
    run cache) exactly when its entry in dvc.lock changed.
    """
    import tempfile
    import time

    from tasks.common.outputs import OUTCOME_ENV, StageOutcome

    before = _locked(root, stage)
    with tempfile.TemporaryDirectory(prefix=f"{stage}-outcome-") as tmp:
        outcome_file = Path(tmp) / "outcome.json"
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               **(extra_env or {}), OUTCOME_ENV: str(outcome_file)}
        started = time.perf_counter()
        returncode, tail = _stream([sys.executable, "-m", "dvc", "repro", "--single-item", stage], root, env)
        seconds = time.perf_counter() - started
        outcome = StageOutcome.read(outcome_file) if outcome_file.is_file() else None
    if returncode != 0:
        if outcome and not outcome.ok:
            raise StageFailed(f"stage '{stage}' failed: {outcome.error}: {outcome.message}", outcome.error,
                              outcome.retryable)
        reasons = [line for line in tail if line.startswith("ERROR")] or tail[-5:]
        raise StageFailed(f"stage '{stage}' failed (exit {returncode}): " + " | ".join(reasons))
    return StageRun(stage, executed=_locked(root, stage) != before, seconds=seconds,
                    work_seconds=outcome.seconds if outcome else 0.0)


def _locked(root: Path, stage: str) -> dict | None:
    """The stage's entry in dvc.lock (its deps', params' and outs' hashes as of its last run)."""
    import yaml

    lock = root / "dvc.lock"
    return (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).get(stage) if lock.is_file() else None


def _stream(cmd: list[str], cwd: Path, env: dict) -> tuple[int, list[str]]:
    """Run `cmd`, echoing its output as it comes; its exit code and its last lines."""
    from collections import deque

    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1)
    tail: deque[str] = deque(maxlen=50)
    hint, blank = False, ""  # a blank line is held back until the next line shows whether a hint follows
    try:
        for line in proc.stdout:
            tail.append(line.rstrip())
            hint = _dvc_hint(line, hint)
            if hint:
                blank = ""
            elif not line.strip():
                sys.stdout.write(blank)
                blank = line
            else:
                sys.stdout.write(blank + line)
                blank = ""
        proc.wait()
    finally:
        if proc.poll() is None:  # interrupted (a Prefect timeout, Ctrl-C): the stage must not run on unseen
            proc.kill()
            proc.wait()
    return proc.returncode, list(tail)


# What `dvc repro` tells a person at a terminal after each stage, which the flow already does for them: it pushes
# the data versions itself, and dvc.lock is the user's to commit with the change that moved it (README). DVC prints
# them at INFO, the level of its stage headers and errors, so `-q` would hide those too: they are left out here.
_DVC_HINTS = ("To track the changes with git, run:", "To enable auto staging, run:",
              "Use `dvc push` to send your updates to remote storage.")


def _dvc_hint(line: str, in_hint: bool) -> bool:
    """Whether `line` belongs to one of DVC's hints: a hint's first line, then its blank and indented lines."""
    if line.strip() in _DVC_HINTS:
        return True
    return in_hint and (not line.strip() or line.startswith(("\t", " ")))


def push_data(root: Path) -> None:
    """Push every DVC-cached output (the raw and prepared data versions, models) to the default remote."""
    subprocess.run([sys.executable, "-m", "dvc", "push", "-q"], cwd=root, check=True)




def nothing_to_do(root: Path, push: bool) -> bool:
    """DVC reports every stage up to date, the data versions are pushed, no roll-out was cut short and no other run
    holds the workspace: a run would skip every stage, so Prefect need not even be started."""
    from filelock import FileLock, Timeout

    try:
        with FileLock(str(root / LOCK_FILE)).acquire(timeout=0):
            return (not changed_stages(root) and not (push and unpushed(root))
                    and (root / "artifacts/promote/promotion.json").is_file()
                    and not (root / ".serving/rollout.pending").is_file())  # a roll-out cut short: the flow ends it
    except Timeout:  # a run is in progress: the flow refuses this one, and says so
        return False
    except Exception:  # noqa: BLE001 - no dvc.lock yet, a broken workspace: let the flow run and report it properly
        return False
