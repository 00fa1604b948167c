"""The MLflow model registry: log and register a model version, move the `challenger`/`champion` aliases."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

CHAMPION, CHALLENGER = "champion", "challenger"
MODEL_MD5 = "model.md5"  # the registered weights' file hash (artifacts/train/model.pt): what makes a version
CHECKPOINT = "checkpoint/model.pt"  # in the version's run: its weights, loadable without running any code


def registered_version(name: str, run_id: str, model_md5: str) -> str | None:
    """The version of `name` already registered from run `run_id` with these exact weights, if any."""
    import mlflow

    found = mlflow.MlflowClient().search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    same = [v for v in found if v.tags.get(MODEL_MD5) == model_md5]
    return str(min(int(v.version) for v in same)) if same else None


def log_and_register(model, example_x: np.ndarray, example_y: np.ndarray, name: str, run, checkpoint: Path,
                     model_md5: str) -> str:
    """Log `model` with signature and input example, register it under `name`, tag it with the run's lineage.

    The training checkpoint goes with it (`checkpoint/model.pt`, tensors only): what the gate loads a champion
    from, with the project's own code, instead of executing whatever a registry entry's flavour names.
    Idempotent: weights already registered from this run (same file hash) keep their version; a stage re-run
    with nothing new to register registers nothing.
    """
    import mlflow
    from mlflow.models import infer_signature

    existing = registered_version(name, run.info.run_id, model_md5)
    if existing:
        return existing
    mlflow.log_artifact(str(checkpoint), artifact_path=CHECKPOINT.rsplit("/", 1)[0])
    signature = infer_signature(np.asarray(example_x), example_y)
    info = _log_model(model, signature, np.asarray(example_x))
    # Registered with its identity tags in one call (one transaction in MLflow's store): a stage killed right after
    # finds this version by them when it runs again, instead of registering the same weights twice.
    version = str(mlflow.register_model(info.model_uri, name, tags={"run_id": run.info.run_id,
                                                                    MODEL_MD5: model_md5}).version)
    client = mlflow.MlflowClient()
    lineage = {k: v for k, v in run.data.tags.items() if not k.startswith(("mlflow.", "gate."))}
    for key, value in lineage.items():
        client.set_model_version_tag(name, version, key, value)
    return version


def _log_model(model, signature, example: np.ndarray):
    """A network logged with MLflow's pytorch flavour, a tree ensemble (tasks/nn/checkpoint.py TreeModel) with its
    onnx one (not registered yet)."""
    import mlflow

    requirements = _requirements(ONNX_LIBRARIES if hasattr(model, "onnx") else ("torch", "numpy"))
    if hasattr(model, "onnx"):
        import onnx

        return mlflow.onnx.log_model(onnx.load_from_string(model.onnx), name="model", signature=signature,
                                     input_example=example, pip_requirements=requirements)
    return mlflow.pytorch.log_model(model, name="model", signature=signature, input_example=example,
                                    pip_requirements=requirements)


ONNX_LIBRARIES = ("onnx", "onnxruntime", "numpy")  # what an ONNX model needs to be loaded and run


def _requirements(libraries: tuple[str, ...]) -> list[str]:
    """A logged model's pip requirements, stated, not inferred: MLflow's inference loads the model again in a
    subprocess (1.5 to 2 s of CPU each time) and drops torch's +cpu label."""
    return [f"{lib}=={metadata.version(lib).split('+')[0]}" for lib in libraries]


def champion_version(name: str) -> str | None:
    """The version the `champion` alias points at; None when there is none."""
    import mlflow

    try:
        return str(mlflow.MlflowClient().get_model_version_by_alias(name, CHAMPION).version)
    except mlflow.exceptions.MlflowException:
        return None


def newest_for_champion(name: str, stored: list, what: str):
    """The newest of `stored` (BentoML models or Bentos, labelled with the `model_version` they hold) that holds
    `name`'s current champion; PromotionError, saying what to run, when there is none."""
    from tasks.common.errors import PromotionError

    champion = champion_version(name)
    if champion is None:
        raise PromotionError(f"{name} has no champion yet: run the pipeline (make run)")
    built = [s for s in stored if s.info.labels.get("model_version") == champion]
    if not built:
        raise PromotionError(f"no {what} was built for champion version {champion} on this machine; run the "
                             "pipeline (make run) or name one")
    return max(built, key=lambda s: s.info.creation_time)


@dataclass(frozen=True)
class Move:
    """One move of the `champion` alias, as recorded in MLflow."""

    seq: int
    action: str  # promote | rollback
    from_version: str | None
    to_version: str
    reason: str
    source_run: str  # the MLflow run of the pipeline run that asked for it, if any
    time: str  # ISO 8601, UTC
    record_run: str  # the MLflow run holding this record


def history_experiment(name: str) -> str:
    """The MLflow experiment that records the moves of `name`'s champion alias, one run per move."""
    return f"{name}-promotions"


def history(name: str) -> list[Move]:
    """Every recorded move of `name`'s champion alias, oldest first."""
    import mlflow

    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(history_experiment(name))
    if experiment is None:
        return []
    runs = client.search_runs([experiment.experiment_id], max_results=50_000)
    moves = [_move(r) for r in runs if "move.seq" in r.data.tags]
    return sorted(moves, key=lambda m: m.seq)


def move_champion(name: str, version: str, action: str, reason: str, source_run: str = "") -> Move:
    """Point `champion` at `version` (and the compressed model's `champion` at its variant) and append the
    move to the history. Call under `promotion_lock()`: the history's order is the lock's order."""
    import mlflow

    client = mlflow.MlflowClient()
    before = champion_version(name)
    client.set_registered_model_alias(name, CHAMPION, version)
    compressed = client.get_model_version(name, version).tags.get("compressed.version")
    if compressed:  # what is served: the variant packaged from this version (tasks/package/)
        client.set_registered_model_alias(compressed_name(name), CHAMPION, compressed)
    experiment = client.get_experiment_by_name(history_experiment(name))
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(history_experiment(name))
    seq = len(history(name)) + 1
    tags = {"move.seq": str(seq), "move.action": action, "move.from": before or "none", "move.to": version,
            "move.reason": reason[:4900], "move.source_run": source_run}
    record = client.create_run(experiment_id, run_name=f"{seq}: {action} v{before or '-'} -> v{version}", tags=tags)
    client.set_terminated(record.info.run_id)
    return _move(client.get_run(record.info.run_id))


def rollback(name: str, to_version: str | None = None, reason: str = "") -> Move:
    """Move `champion` back: to the champion before the current one (promotions and rollbacks replayed as a
    stack), or to `to_version`. Raises LookupError when there is nothing to go back to."""
    import mlflow

    with promotion_lock():
        current = champion_version(name)
        if current is None:
            raise LookupError(f"{name} has no champion to roll back")
        target = to_version or _previous_champion(history(name), current)
        if target is None:
            raise LookupError(f"{name}'s champion v{current} has no earlier champion in its history")
        mlflow.MlflowClient().get_model_version(name, target)  # raises for a version that does not exist
        return move_champion(name, target, "rollback", reason or f"rolled back from v{current}")


def _previous_champion(moves: list[Move], current: str) -> str | None:
    stack: list[str] = []
    for move in moves:
        if move.action == "rollback" and stack[-2:-1] == [move.to_version]:
            stack.pop()  # a rollback to the one below: the one on top is undone
        else:
            stack.append(move.to_version)
    if stack and stack[-1] == current and len(stack) > 1:
        return stack[-2]
    return None


def _move(run) -> Move:
    from datetime import datetime, timezone

    t = run.data.tags
    when = datetime.fromtimestamp(run.info.start_time / 1000, tz=timezone.utc).isoformat(timespec="seconds")
    return Move(int(t["move.seq"]), t["move.action"], None if t["move.from"] == "none" else t["move.from"],
                t["move.to"], t["move.reason"], t.get("move.source_run", ""), when, run.info.run_id)


def compressed_name(name: str) -> str:
    """The registered model holding the compressed variants packaged from `name`'s versions."""
    return f"{name}-compressed"


def register_compressed(name: str, version: str, onnx_path, table: list[dict], chosen: str, run) -> str:
    """Register the shipped ONNX variant of `name` v`version` as a version of `compressed_name(name)`, tagged with
    the fp32 version it came from and its measured row; the fp32 version is tagged back with it."""
    import json

    import mlflow
    import onnx

    import hashlib

    client = mlflow.MlflowClient()
    row = next(r for r in table if r["variant"] == chosen)
    identity = {"source.model": name, "source.version": version, "source.run_id": run.info.run_id, "variant": chosen,
                "onnx.md5": hashlib.md5(Path(onnx_path).read_bytes()).hexdigest()}
    found = [v for v in client.search_model_versions(f"name = '{compressed_name(name)}' and run_id = "
                                                     f"'{run.info.run_id}'")
             if all(v.tags.get(k) == value for k, value in identity.items())]
    if found:  # a package stage killed after registering it, run again: the same version, not a second one
        compressed = str(min(int(v.version) for v in found))
    else:  # registered with its identity in one call (one transaction), so a kill right after cannot duplicate it
        info = mlflow.onnx.log_model(onnx.load(str(onnx_path)), name="compressed_model",
                                     pip_requirements=_requirements(ONNX_LIBRARIES))
        compressed = str(mlflow.register_model(info.model_uri, compressed_name(name), tags=identity).version)
    tags = {**{f"measured.{k}": f"{v:.6g}" if isinstance(v, float) else str(v)
               for k, v in row.items() if k != "variant"},
            "measured.table": json.dumps(table)[:4900]}  # the whole table is on the run too: compression/variants.json
    for key, value in tags.items():
        client.set_model_version_tag(compressed_name(name), compressed, key, value)
    client.update_model_version(compressed_name(name), compressed,
                                description=f"{chosen} of {name} v{version}: {row['size_bytes'] / 1024:.0f} KB, "
                                            f"accuracy {row['accuracy']:.4f} (drop {row['accuracy_drop']:+.4f}), "
                                            f"{row['speedup_b1']:.1f}x faster at batch 1 than fp32")
    client.set_model_version_tag(name, version, "compressed.version", compressed)
    client.set_model_version_tag(name, version, "compressed.variant", chosen)
    return compressed


@contextmanager
def promotion_lock(timeout_s: float = 600):
    """Serialise register-decide-promote across processes on this machine that share the tracking store.

    The lock file sits beside a SQLite store, or under ~/.cache for a server URI (processes on other
    machines are not serialised by it: run promotions from one scheduler there).
    """
    import hashlib
    import os
    from pathlib import Path

    import mlflow
    from filelock import FileLock

    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///") + ".promotion.lock")
    else:
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mlops-pipeline"
        cache.mkdir(parents=True, exist_ok=True)
        path = cache / f"{hashlib.md5(uri.encode()).hexdigest()}.promotion.lock"
    with FileLock(str(path), timeout=timeout_s):
        yield
