"""MLflow set-up and lineage: one run per pipeline run, opened by `train` and resumed by later stages."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

from tasks.common.outputs import TrainRun

LIBRARIES = ("torch", "mlflow", "great-expectations", "prefect", "dvc", "bentoml", "onnxruntime", "numpy")


def tracking_uri(root: Path) -> str:
    """MLFLOW_TRACKING_URI when set, else a SQLite store inside the project."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(Path(root) / 'mlflow.db').resolve()}"


def use_store(root: Path) -> bool:
    """Point MLflow at the project's store (or the user's server); True when the user set MLFLOW_TRACKING_URI."""
    import mlflow

    user_server = "MLFLOW_TRACKING_URI" in os.environ
    mlflow.set_tracking_uri(tracking_uri(root))
    if not user_server:
        # set_tracking_uri exports the variable for subprocesses; left there, it would pin this process (and
        # every later project root in it) to this root's store and be mistaken for a user's server.
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    return user_server


def configure(root: Path, experiment: str) -> str:
    """Point MLflow at the project's store and experiment; return the experiment id."""
    import mlflow

    user_server = use_store(root)
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    # The local default keeps artifacts beside the database; a tracking server picks its own store.
    location = None if user_server else (Path(root) / "mlartifacts").resolve().as_uri()
    try:
        return mlflow.create_experiment(experiment, artifact_location=location)
    except mlflow.exceptions.MlflowException:  # created meanwhile by a concurrent run
        return mlflow.get_experiment_by_name(experiment).experiment_id


@contextmanager
def resumed_run(root: Path, experiment: str, run_file: Path):
    """Reopen the run `train` recorded in `run_file`."""
    import mlflow

    configure(root, experiment)
    run_id = TrainRun.read(Path(run_file)).run_id
    with mlflow.start_run(run_id=run_id) as run, marked_open(root, run):
        if os.environ.get("PIPELINE_OVERRIDES", "{}") != "{}":  # a later flow run re-ran this stage with overrides
            mlflow.set_tag("pipeline.overrides", os.environ["PIPELINE_OVERRIDES"])
        if os.environ.get("PIPELINE_ORIGIN"):
            mlflow.set_tag("pipeline.origin", os.environ["PIPELINE_ORIGIN"])
        yield run


OPEN_RUNS = ".mlflow-open"  # a marker per MLflow run a process of this project holds open; a kill leaves it behind


@contextmanager
def marked_open(root: Path, run):
    """While the block runs, `root/.mlflow-open/<run>.<pid>.json` says this process holds `run` open. It goes when the
    block ends, error or not; a SIGKILL, an OOM kill or a power cut leaves it, and the next run ends the run
    (end_orphaned_runs): otherwise a run whose next attempt trains anew (other params) stays RUNNING for ever."""
    import mlflow

    from tasks.common.atomic import write_json

    marker = Path(root) / OPEN_RUNS / f"{run.info.run_id}.{os.getpid()}.json"
    marker.parent.mkdir(exist_ok=True)
    write_json(marker, {"run_id": run.info.run_id, "pid": os.getpid(), "tracking_uri": mlflow.get_tracking_uri()})
    try:
        yield run
    finally:
        marker.unlink(missing_ok=True)


def end_orphaned_runs(root: Path) -> list[str]:
    """End KILLED each MLflow run whose holder was killed (its marker outlived its process); what was ended, in words.
    MLflow is imported only when such a marker exists."""
    folder = Path(root) / OPEN_RUNS
    markers = [m for m in sorted(folder.glob("*.json")) if not _alive(m)] if folder.is_dir() else []
    if not markers:
        return []
    import mlflow

    ended = []
    for marker in markers:
        try:
            found = json.loads(marker.read_text())
            client = mlflow.MlflowClient(tracking_uri=found["tracking_uri"])
            if client.get_run(found["run_id"]).info.status == "RUNNING":
                client.set_tag(found["run_id"], "ended_by", "the next run: the process that held it open was killed")
                client.set_terminated(found["run_id"], "KILLED")
                ended.append(f"MLflow run {found['run_id']} (process {found['pid']}, killed) ended KILLED")
        except (OSError, ValueError, KeyError, mlflow.exceptions.MlflowException) as err:
            ended.append(f"MLflow run of {marker.name} not ended ({type(err).__name__}: {str(err)[:200]})")
        marker.unlink(missing_ok=True)
    return ended


def _alive(marker: Path) -> bool:
    """Whether the process a marker names (`<run>.<pid>.json`) still runs on this machine."""
    try:
        os.kill(int(marker.stem.rsplit(".", 1)[1]), 0)
    except (ValueError, IndexError, ProcessLookupError):
        return False
    except PermissionError:  # another user's process of that number
        return True
    return True


def record_run(run_file: Path, run_id: str, experiment_id: str) -> None:
    TrainRun(run_id=run_id, experiment_id=experiment_id).write(run_file)


MAX_TAG = 4000  # characters; MLflow's tag value limit is larger, but a tag is meant to be read at a glance


def lineage_tags(root: Path, data_hashes: dict[str, str], params: dict) -> dict[str, str]:
    """Tags that tie a run to its code, data, params and libraries."""
    params_blob = json.dumps(params, sort_keys=True).encode()
    tags = {
        "git.commit": _git(root, "rev-parse", "HEAD") or "unknown",
        "git.dirty": str(bool(_git(root, "status", "--porcelain", "--untracked-files=no"))).lower(),
        "params.md5": hashlib.md5(params_blob).hexdigest(),
        "python": platform.python_version(),
    }
    tags.update({f"data.{name}.md5": digest for name, digest in data_hashes.items()})
    tags.update(dvc_hashes(root))
    for lib in LIBRARIES:
        try:
            tags[f"version.{lib}"] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            pass
    if os.environ.get("PIPELINE_FLOW_RUN_ID"):  # set by flows/pipeline.py when Prefect runs the stage
        tags["prefect.flow_run_id"] = os.environ["PIPELINE_FLOW_RUN_ID"]
    if os.environ.get("PIPELINE_OVERRIDES", "{}") != "{}":  # the run's --set / deployment overrides, as JSON
        tags["pipeline.overrides"] = os.environ["PIPELINE_OVERRIDES"]
    if os.environ.get("PIPELINE_ORIGIN"):  # where the overrides came from: a sweep's trial
        tags["pipeline.origin"] = os.environ["PIPELINE_ORIGIN"]
    return tags


def data_tags(data) -> dict[str, str]:
    """What the data is, as run tags (tasks/common/outputs.py DataDescription): the class vocabulary in output
    order, the problem type and why, and the input's kind and shape."""
    classes = json.dumps(data.classes)
    return {
        "data.classes": classes if len(classes) <= MAX_TAG else classes[: MAX_TAG - 20] + " … (data/description.json)",
        "data.n_classes": str(len(data.classes)),
        "data.problem": f"{data.problem}: {data.problem_reason}",
        "data.kind": data.kind,
        "data.served_shape": "x".join(map(str, data.served_shape)),
    }


def dvc_hashes(root: Path) -> dict[str, str]:
    """DVC's recorded hash of each data output (`data/raw`, `data/prepared`), from dvc.lock when DVC ran the stages."""
    import yaml

    lock = Path(root) / "dvc.lock"
    if not lock.is_file():
        return {}
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    return {
        f"dvc.{out['path']}": out["md5"]
        for stage in stages.values()
        for out in stage.get("outs", [])
        if str(out.get("path", "")).startswith("data/") and "md5" in out
    }


def _git(root: Path, *args: str) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return ""
    return done.stdout.strip()
