"""The MLflow model registry: log and register a model version, move the `challenger`/`champion` aliases."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
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
    champion_accuracy: float | None = None  # on this run's test split
    improvement: float | None = None
    class_regressions: dict[str, float] = field(default_factory=dict)


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


@dataclass(frozen=True)
class Scores:
    """A model's accuracy and per-class recall on one test split."""

    accuracy: float
    recall: dict[str, float]


@dataclass(frozen=True)
class Champion:
    version: str
    scores: Scores | None  # None when it cannot score this test split
    problem: str = ""


def champion_scores(name: str, score) -> Champion | None:
    """The current champion, re-scored by `score(predict)` on the caller's test split; None when there is none.

    `predict` maps an input array to the champion's outputs (through MLflow's pyfunc flavour: the logged
    `pt2` program loads back as a graph module, not as our class). A champion that cannot take this
    split's inputs (another shape, another class count) is returned without scores, with the reason.
    """
    import mlflow

    client = mlflow.MlflowClient()
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except mlflow.exceptions.MlflowException:
        return None
    try:
        model = mlflow.pyfunc.load_model(f"models:/{name}@{CHAMPION}")
        return Champion(str(champion.version), score(lambda x: np.asarray(model.predict(x))))
    except (mlflow.exceptions.MlflowException, RuntimeError, ValueError, IndexError) as err:
        return Champion(str(champion.version), None, f"{type(err).__name__}: {str(err).splitlines()[0][:200]}")


def decide(params: EvaluateParams, version: str, challenger: Scores, champion: Champion | None) -> Decision:
    """Promote `version` only if it clears `min_accuracy` and, against a champion scored on the same test split,
    gains at least `min_improvement` accuracy while no class's recall drops by more than `max_class_regression`."""
    previous = champion.version if champion else None
    accuracy = challenger.accuracy
    if accuracy < params.min_accuracy:
        return Decision(version, False, f"test accuracy {accuracy:.4f} below min_accuracy {params.min_accuracy}", previous)
    if champion is None:
        return Decision(version, True, f"promoted to champion: test accuracy {accuracy:.4f}, the first model above "
                                       f"min_accuracy {params.min_accuracy}", None)
    if champion.scores is None:
        return Decision(version, False, f"champion v{previous} cannot score this test split ({champion.problem}); "
                                        "register under a new evaluate.registered_model to start a new line", previous)
    theirs = champion.scores
    gain = accuracy - theirs.accuracy
    numbers = dict(previous_champion=previous, champion_accuracy=theirs.accuracy, improvement=gain)
    versus = f"test accuracy {accuracy:.4f} vs champion v{previous}'s {theirs.accuracy:.4f} on the same test split ({gain:+.4f})"
    if gain < params.min_improvement:
        return Decision(version, False, f"{versus}: below min_improvement {params.min_improvement}", **numbers)
    regressions = {c: theirs.recall[c] - r for c, r in challenger.recall.items()
                   if c in theirs.recall and theirs.recall[c] - r > params.max_class_regression}
    if regressions:
        named = ", ".join(f"class {c} recall -{d:.4f}" for c, d in sorted(regressions.items()))
        return Decision(version, False, f"{versus}, but {named} (max_class_regression {params.max_class_regression})",
                        **numbers, class_regressions=regressions)
    return Decision(version, True, f"promoted to champion: {versus}, no class recall down by more than "
                                   f"{params.max_class_regression}", **numbers)


def champion_version(name: str) -> str | None:
    """The version the `champion` alias points at; None when there is none."""
    import mlflow

    try:
        return str(mlflow.MlflowClient().get_model_version_by_alias(name, CHAMPION).version)
    except mlflow.exceptions.MlflowException:
        return None


def set_champion(name: str, version: str) -> None:
    import mlflow

    mlflow.MlflowClient().set_registered_model_alias(name, CHAMPION, version)


@contextmanager
def promotion_lock(timeout_s: float = 600):
    """Serialise register-decide-promote across processes on this machine that share the tracking store.

    The lock file sits beside a SQLite store, or under ~/.cache for a server URI (processes on other
    machines are not serialised by it: run promotions from one scheduler there).
    """
    import hashlib
    import os
    from pathlib import Path

    from filelock import FileLock

    import mlflow

    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///") + ".promotion.lock")
    else:
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mlops-pipeline"
        cache.mkdir(parents=True, exist_ok=True)
        path = cache / f"{hashlib.md5(uri.encode()).hexdigest()}.promotion.lock"
    with FileLock(str(path), timeout=timeout_s):
        yield
