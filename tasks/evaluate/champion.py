"""The current champion, loaded from the registry and re-scored on this run's test split for the paired gate.

Loaded as data, never as code: a registry entry on a shared tracking server can name any loader module and carry
a `code/` folder, and MLflow's pyfunc loader would import them. The champion's training checkpoint (tensors only,
`torch.load(weights_only=True)`) is rebuilt by the project's own model code, after its MLmodel is checked to be
what `evaluate` registers."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from tasks.common.errors import PromotionError
from tasks.common.registry import CHAMPION, CHECKPOINT
from tasks.evaluate.gate import Champion

# what evaluate registers (mlflow.pytorch.log_model for a network, mlflow.onnx.log_model for a tree ensemble): any
# other flavour, loader or a code folder is not ours
OWN_FLAVOURS = {"pytorch": "mlflow.pytorch", "onnx": "mlflow.onnx"}  # flavour (beside python_function) → its loader


class UntrustedModel(PromotionError):
    """A registry entry that is not what this project registers: it is not loaded."""


def champion_scores(name: str, score) -> Champion | None:
    """The current champion, re-scored by `score(predict)` on the caller's test split; None when there is none.

    `predict` maps an input array to the champion's class probabilities. A champion that cannot take this split's
    inputs (another shape, another class count), or whose registry entry is not the project's own, is returned
    without scores, with the reason (the gate then promotes nothing).
    """
    import mlflow

    from tasks.evaluate.stage import predict_proba

    client = mlflow.MlflowClient()
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except mlflow.exceptions.MlflowException:
        return None
    try:
        model = load_own(client, name, champion)
        return Champion(str(champion.version), score(lambda x: predict_proba(model, np.asarray(x, dtype=np.float32))))
    except (mlflow.exceptions.MlflowException, UntrustedModel, OSError, RuntimeError, ValueError, IndexError,
            KeyError) as err:
        return Champion(str(champion.version), None, f"{type(err).__name__}: {str(err).splitlines()[0][:400]}")


def load_own(client, name: str, version):
    """The version's network, rebuilt from its checkpoint by tasks/nn; UntrustedModel if its entry is not ours."""
    import mlflow
    import yaml

    from tasks.nn.checkpoint import load_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        source = client.get_model_version_download_uri(name, version.version)
        mlmodel_path = mlflow.artifacts.download_artifacts(f"{source}/MLmodel", dst_path=tmp)
        mlmodel = yaml.safe_load(Path(mlmodel_path).read_text())
        check_own(mlmodel, f"{name} v{version.version}")
        if not version.run_id:
            raise UntrustedModel(f"{name} v{version.version} names no run: it was not registered by evaluate")
        path = mlflow.artifacts.download_artifacts(run_id=version.run_id, artifact_path=CHECKPOINT, dst_path=tmp)
        model, _ = load_checkpoint(Path(path))
    return model


def check_own(mlmodel: dict, what: str) -> None:
    """Refuse an MLmodel whose flavours, pyfunc loader or code folder are not those evaluate logs."""
    flavours = (mlmodel or {}).get("flavors") or {}
    pyfunc = flavours.get("python_function") or {}
    problems = []
    if any(flavour.get("code") for flavour in flavours.values() if isinstance(flavour, dict)):
        problems.append("a code folder (this project logs none)")
    own = next((f for f in OWN_FLAVOURS if set(flavours) == {f, "python_function"}), None)
    loaders = [OWN_FLAVOURS[own]] if own else list(OWN_FLAVOURS.values())
    if pyfunc.get("loader_module") not in loaders:
        problems.append(f"loader module {pyfunc.get('loader_module')!r} (this project's: {' or '.join(loaders)})")
    if own is None:
        problems.append(f"flavours {sorted(flavours)} (this project logs python_function with one of "
                        f"{sorted(OWN_FLAVOURS)})")
    if problems:
        raise UntrustedModel(f"{what} is not a model this project registered, so it is not loaded: "
                             + "; ".join(problems))
