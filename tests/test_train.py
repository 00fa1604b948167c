import json

import mlflow
import numpy as np
import pytest

from tasks.checkpoint import load_checkpoint
from tasks.evaluate import classification_metrics, predict_proba
from tasks.dataset import load_split
from tasks.train import train


@pytest.fixture
def quick(params):
    return params.model_copy(update={"train": params.train.model_copy(update={"epochs": 4, "patience": 2})})


def test_train_writes_checkpoint_metrics_and_an_mlflow_run(quick, prepared, tmp_path):
    result = train(quick, tmp_path, prepared, tmp_path / "train")
    assert result.device == "cpu" and 1 <= result.best_epoch <= result.epochs_run <= 4
    model, payload = load_checkpoint(tmp_path / "train" / "model.pt")
    assert payload["params"]["train"]["epochs"] == 4 and payload["seed"] == quick.base.seed
    test = load_split(prepared / "test")
    accuracy = classification_metrics(test.y, predict_proba(model, np.asarray(test.x)).argmax(1))[0]["accuracy"]
    assert accuracy > 0.8  # four epochs already learn most digits
    run = mlflow.MlflowClient().get_run(json.loads((tmp_path / "train" / "run.json").read_text())["run_id"])
    assert run.data.params["train.epochs"] == "4"
    assert {"git.commit", "data.train.md5", "params.md5", "version.torch"} <= set(run.data.tags)
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "val_loss")
    assert len(history) == result.epochs_run
    lines = (tmp_path / "train" / "history.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,") and len(lines) == result.epochs_run + 1


def test_same_seed_gives_identical_weights(quick, prepared, tmp_path):
    import torch

    train(quick, tmp_path, prepared, tmp_path / "a")
    train(quick, tmp_path, prepared, tmp_path / "b")
    a = torch.load(tmp_path / "a" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_mlp_is_selectable(quick, prepared, tmp_path):
    mlp = quick.model_copy(update={"train": quick.train.model_copy(update={"model": "mlp", "epochs": 2})})
    train(mlp, tmp_path, prepared, tmp_path / "mlp")
    model, _ = load_checkpoint(tmp_path / "mlp" / "model.pt")
    assert type(model).__name__ == "MLP"
