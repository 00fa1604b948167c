"""The current champion, loaded from the registry and re-scored on this run's test split for the paired gate."""

from __future__ import annotations

import numpy as np

from tasks.common.registry import CHAMPION
from tasks.evaluate.gate import Champion


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
