"""The MLflow model registry: log and register a model version, move the `challenger`/`champion` aliases."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata

import numpy as np

from tasks.config import EvaluateParams

CHAMPION, CHALLENGER = "champion", "challenger"


@dataclass(frozen=True)
class Decision:
    version: str
    promoted: bool
    reason: str
    previous_champion: str | None


def log_and_register(model, example_x: np.ndarray, example_y: np.ndarray, name: str, run) -> str:
    """Log `model` with signature and input example, register it under `name`, tag it with the run's lineage."""
    import mlflow
    from mlflow.models import infer_signature

    signature = infer_signature(np.asarray(example_x), example_y)
    # Stated, not inferred: inference re-imports the model in a subprocess (seconds) and drops torch's +cpu label anyway.
    requirements = [f"{lib}=={metadata.version(lib).split('+')[0]}" for lib in ("torch", "numpy")]
    info = mlflow.pytorch.log_model(
        model, name="model", signature=signature, input_example=np.asarray(example_x),
        registered_model_name=name, pip_requirements=requirements,
    )
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient()
    lineage = {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")}
    for key, value in {**lineage, "run_id": run.info.run_id}.items():
        client.set_model_version_tag(name, version, key, value)
    client.set_registered_model_alias(name, CHALLENGER, version)
    return version


def champion_accuracy(name: str) -> tuple[str, float] | None:
    """The current champion's version and test accuracy, or None when there is no champion."""
    import mlflow

    client = mlflow.MlflowClient()
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except mlflow.exceptions.MlflowException:
        return None
    accuracy = client.get_run(champion.run_id).data.metrics.get("test_accuracy", 0.0)
    return champion.version, accuracy


def decide_promotion(params: EvaluateParams, version: str, accuracy: float) -> Decision:
    """Make `version` champion if it clears `min_accuracy` and is at least as accurate as the champion."""
    import mlflow

    current = champion_accuracy(params.registered_model)
    previous = current[0] if current else None
    if accuracy < params.min_accuracy:
        return Decision(version, False, f"test accuracy {accuracy:.4f} below min_accuracy {params.min_accuracy}", previous)
    if current is not None and accuracy < current[1]:
        return Decision(version, False, f"test accuracy {accuracy:.4f} below champion v{previous}'s {current[1]:.4f}", previous)
    mlflow.MlflowClient().set_registered_model_alias(params.registered_model, CHAMPION, version)
    why = "first model above min_accuracy" if current is None else f"matches or beats champion v{previous} ({current[1]:.4f})"
    return Decision(version, True, f"promoted to champion: test accuracy {accuracy:.4f}, {why}", previous)
