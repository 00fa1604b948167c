"""The stages of dvc.yaml in run order, read from DVC itself so the flow never keeps a second copy of the DAG."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import chdir, contextmanager
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
        return [stage.name for stage in ordered if isinstance(stage, PipelineStage)]


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
    return {name.split(":")[-1] for name in _status(root)}


def _status(root: Path) -> dict:
    """`dvc status dvc.yaml`, once no stage's dep folder holds a file that blocks whoever opens it (DVC hashes each)."""
    from dvc.repo import Repo

    refuse_blocking_files(root)
    with Repo(str(root)) as repo:
        return repo.status(targets=[str(Path(root) / PIPELINE)])


def refuse_blocking_files(root: Path) -> None:
    """A DataError naming each FIFO, socket or device in a folder a dvc.yaml stage depends on (the data source
    above all): DVC reads every file of a dep to hash it, and opening a FIFO blocks for ever, so `mlops run` hung
    before any stage (ingest itself skips such a file: tasks/common/files.py)."""
    import stat

    from tasks.common.config import yaml_data
    from tasks.common.errors import DataError

    stages = (yaml_data((root / PIPELINE).read_text()) or {}).get("stages", {})
    folders = {root / dep for stage in stages.values() for dep in stage.get("deps", []) if (root / dep).is_dir()}
    blocking = []
    for folder in sorted(folders):
        for parent, _, names in os.walk(folder):
            for name in names:
                try:
                    mode = os.stat(Path(parent) / name).st_mode  # (follows a link: what DVC would open)
                except OSError:
                    continue
                if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                    blocking.append(str((Path(parent) / name).relative_to(root)))
    if blocking:
        raise DataError(f"{len(blocking)} file(s) that are not regular files (a FIFO, a socket or a device) in a "
                        f"folder the pipeline reads: {', '.join(blocking[:10])}; DVC would block reading them: "
                        "remove them from the folder")


def stages_to_run(root: Path, overrides: dict | None = None) -> list[str] | None:
    """The dvc.yaml stages a run with `overrides` is to execute, told before they are applied (params.yaml is not
    touched): every stage from the first one that is not in dvc.lock, that DVC's status reports changed other than
    in its params, or whose params recorded in dvc.lock differ from params.yaml's values with the overrides. On the
    safe side: a stage after that one may still be up to date, which the flow finds out by asking DVC again with
    the overrides applied. The stages' warm host imports what these stages need (tasks/common/stage_host.py).
    None when that is every stage without asking (no dvc.lock yet: a first run) or when DVC cannot tell (a broken
    dvc.yaml or dvc.lock: the flow reports it)."""
    lock = root / "dvc.lock"
    if not lock.is_file():
        return None
    import yaml
    from dvc.exceptions import DvcException

    from flows.overrides import overridden_text
    from tasks.common.config import yaml_data

    try:
        params = yaml_data(overridden_text((root / "params.yaml").read_text(), overrides or {})) or {}
        recorded = locked_stages(root)
        status = _status(root)
        order = stage_order(root)
    except (DvcException, OSError, ValueError, yaml.YAMLError):
        return None
    changed = {stage for stage in order if stage not in recorded or _params_differ(recorded[stage], params)}
    changed |= {name.split(":")[-1] for name, found in status.items() if _beyond_params(found)}
    first = min((order.index(stage) for stage in changed if stage in order), default=len(order))
    return order[first:]


def _params_differ(entry: dict, params: dict) -> bool:
    """Whether any param a stage recorded in dvc.lock (a key, or a whole section) has another value in `params`."""
    for file, values in entry.get("params", {}).items():
        for key, value in values.items():
            if file != "params.yaml" or _at(params, key) != value:  # (another params file: counted as changed)
                return True
    return False


def _at(tree: dict, dotted: str) -> object:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return _MISSING
        tree = tree[part]
    return tree


_MISSING = object()


def _beyond_params(found: list) -> bool:
    """Whether DVC's status of a stage names a change other than the values in a params file (a dep's or an out's
    content, the command, a stage that always runs)."""
    for change in found:
        if not isinstance(change, dict):
            return True
        for kind, what in change.items():
            if kind != "changed deps" or any(not isinstance(detail, dict) for detail in what.values()):
                return True
    return False


def unpushed(root: Path) -> bool:
    """Whether the default DVC remote lacks any cached output (what `dvc push` would send)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return any(repo.status(cloud=True).values())


def repro_stage(root: Path, stage: str, extra_env: dict[str, str] | None = None) -> StageRun:
    """`dvc repro --single-item <stage>` through DVC's Python API, in this process: DVC decides whether the stage is
    up to date, runs its command, hashes its outputs and writes dvc.lock, exactly as `dvc repro` would, without a
    new interpreter importing DVC for every stage (0.4 to 0.5 s each). DVC prints its messages as its command line
    does (it sets up its loggers when imported), and the stage command writes to this process's own output.

    What happened is read from files, not from printed text: the stage's command writes its outcome
    (tasks/common/stage_cli.py) to a file named here, and the stage ran (or DVC restored its outputs from the
    run cache) exactly when its entry in dvc.lock changed.
    """
    import tempfile
    import time

    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    from tasks.common.outputs import OUTCOME_ENV, StageOutcome

    before = _locked(root, stage)
    failed: DvcException | None = None
    with tempfile.TemporaryDirectory(prefix=f"{stage}-outcome-") as tmp:
        outcome_file = Path(tmp) / "outcome.json"
        env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               **(extra_env or {}), OUTCOME_ENV: str(outcome_file)}  # on top of this process's environment
        started = time.perf_counter()
        # in the project's folder, as `dvc repro` runs (DVC reads some paths relative to the working directory)
        with chdir(root), _dvc_printing_only(), Repo(str(root)) as repo:
            repo.scm_context.quiet = True  # its "to track the changes with git" hint: dvc.lock is the user's to commit
            try:
                repo.reproduce(f"{PIPELINE}:{stage}", single_item=True, run_env=env)
            except DvcException as err:
                failed = err
        seconds = time.perf_counter() - started
        outcome = StageOutcome.read(outcome_file) if outcome_file.is_file() else None
    if failed is not None:
        if _interrupted(failed):  # Ctrl-C reached the stage command (DVC runs it in the foreground), not this process
            raise KeyboardInterrupt(f"stage '{stage}' was interrupted")
        if outcome and not outcome.ok:
            raise StageFailed(f"stage '{stage}' failed: {outcome.error}: {outcome.message}", outcome.error,
                              outcome.retryable)
        # DVC's own words, from "failed to reproduce" down to the cause (e.g. the command's exit code)
        raise StageFailed(f"stage '{stage}' failed: " + ": ".join(str(cause) for cause in _causes(failed)))
    return StageRun(stage, executed=_locked(root, stage) != before, seconds=seconds,
                    work_seconds=outcome.seconds if outcome else 0.0)


def _interrupted(failed: BaseException) -> bool:
    """Whether DVC failed because the stage's command ended on SIGINT (killed by it, or exited 130 as a shell does):
    the run stops there, as it would have had the Ctrl-C reached this process; the stage is not retried."""
    from dvc.stage.exceptions import StageCmdFailedError

    sigint = (f"exited with {-signal.SIGINT}", "exited with 130")
    return any(isinstance(cause, StageCmdFailedError) and str(cause).endswith(sigint) for cause in _causes(failed))


def _causes(error: BaseException) -> Iterator[BaseException]:
    """`error`, then what it was raised from, and so on down."""
    while error is not None:
        yield error
        error = error.__cause__


def _locked(root: Path, stage: str) -> dict | None:
    """The stage's entry in dvc.lock (its deps', params' and outs' hashes as of its last run)."""
    return locked_stages(root).get(stage)


def locked_stages(root: Path) -> dict:
    """dvc.lock's stages by name ({} before the first run)."""
    from tasks.common.config import yaml_data

    lock = root / "dvc.lock"
    return (yaml_data(lock.read_text()) or {}).get("stages", {}) if lock.is_file() else {}


@contextmanager
def _dvc_printing_only() -> Iterator[None]:
    """DVC's messages printed by its own handlers only (it sets them up when imported, as `dvc repro` prints them),
    not a second time by the handlers Prefect puts on the root logger."""
    import logging

    logger = logging.getLogger("dvc")
    propagate, logger.propagate = logger.propagate, False
    try:
        yield
    finally:
        logger.propagate = propagate


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
