"""Evaluation metrics and plots, the gate against the champion, and registering while another process promotes."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml

from tasks.common.registry import move_champion
from tasks.evaluate import calibration, confused_pairs, evaluate
from tasks.train import train

REPO = Path(__file__).resolve().parents[2]


def test_calibration_error_is_zero_when_confidence_matches_accuracy_and_counts_every_prediction():
    y = np.array([0, 1, 0, 1])
    sure = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    assert calibration(y, sure)[0] == pytest.approx(0.0)
    # 0.8 confident everywhere, right 3 times in 4: off by 0.05
    hedged = np.array([[0.8, 0.2], [0.2, 0.8], [0.8, 0.2], [0.8, 0.2]])
    ece, bins = calibration(y, hedged)
    assert ece == pytest.approx(0.05) and sum(b["count"] for b in bins) == 4 and len(bins) == 1
    assert bins[0]["accuracy"] == 0.75 and bins[0]["confidence"] == pytest.approx(0.8)


def test_confused_pairs_are_ranked_by_count_and_named_by_class():
    classes = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight"]
    pairs = confused_pairs(np.array([3, 3, 3, 5, 8, 8]), np.array([8, 8, 3, 6, 3, 3]), classes)
    assert pairs == [{"actual": "three", "predicted": "eight", "count": 2},
                     {"actual": "eight", "predicted": "three", "count": 2},
                     {"actual": "five", "predicted": "six", "count": 1}]


def _project(root: Path, prepared: Path, params, **evaluate_overrides) -> Path:
    """A project root for the stage command line: params.yaml and the prepared data."""
    shutil.copytree(prepared, root / "data" / "prepared")
    tree = params.as_dict()
    tree["train"].update(epochs=3, patience=3)
    tree["evaluate"].update(evaluate_overrides)
    (root / "params.yaml").write_text(yaml.safe_dump(tree))
    return root


def _params(root: Path):
    from tasks.common.config import load_params

    return load_params(root / "params.yaml")


def test_evaluate_logs_metrics_and_plots_and_gates_a_weaker_model_against_the_champion(prepared, params, tmp_path):
    root = _project(tmp_path, prepared, params, min_accuracy=0.05)  # the weak model must reach the comparison
    strong = _params(root)
    train(strong, root, prepared, root / "artifacts/train")
    first = evaluate(strong, root, prepared, root / "artifacts/train", root / "artifacts/evaluate")
    board = json.loads((root / "artifacts/evaluate/leaderboard.json").read_text())
    assert set(board) == {"network", "majority", "logistic_regression"} and board["majority"]["accuracy"] < 0.2
    # three epochs of the CNN fall significantly behind logistic regression on pixels: the baseline gate stops it
    assert board["logistic_regression"]["accuracy"] > board["network"]["accuracy"]
    assert not first.passed and "significantly worse than the logistic regression baseline" in first.reason
    # the champion comparison below, with the baseline gate off
    root = _project(tmp_path / "no-baseline", prepared, params, min_accuracy=0.05, must_beat_baseline=False)
    strong = _params(root)
    train(strong, root, prepared, root / "artifacts/train")
    first = evaluate(strong, root, prepared, root / "artifacts/train", root / "artifacts/evaluate")
    assert first.passed and first.model_version == "1"
    client = mlflow.MlflowClient()
    assert client.get_registered_model(strong.evaluate.registered_model).aliases.get("champion") is None  # promote's job
    move_champion(strong.evaluate.registered_model, "1", "promote", "by the test")
    again = evaluate(strong, root, prepared, root / "artifacts/train", root / "artifacts/evaluate")  # same weights
    assert again.model_version == "1" and again.passed and "the champion already" in again.reason
    assert len(client.search_model_versions(f"name='{strong.evaluate.registered_model}'")) == 1
    assert client.get_registered_model(strong.evaluate.registered_model).aliases == {"champion": 1, "challenger": 1}
    out = root / "artifacts/evaluate"
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 < metrics["expected_calibration_error"] < 0.5  # three epochs: not yet well calibrated
    assert {p.name for p in out.iterdir()} >= {"metrics.json", "per_class.json", "confused_pairs.json", "predictions.csv",
                                             "calibration.csv", "confusion_matrix.png", "reliability.png",
                                             "misclassified.png", "gate.json"}
    run_id = json.loads((root / "artifacts/train/run.json").read_text())["run_id"]
    logged = {a.path for a in client.list_artifacts(run_id, "evaluation")}
    assert {"evaluation/reliability.png", "evaluation/misclassified.png", "evaluation/confused_pairs.json"} <= logged
    assert client.get_run(run_id).data.metrics["test_recall_class_3"] > 0

    weak = strong.model_copy(update={"train": strong.train.model_copy(update={"epochs": 1, "lr": 1e-4})})
    train(weak, root, prepared, root / "artifacts/train")
    second = evaluate(weak, root, prepared, root / "artifacts/train", root / "artifacts/evaluate")
    assert not second.passed and second.model_version == "2"
    assert "vs champion v1's" in second.reason and "on the same test split" in second.reason
    gate = json.loads((out / "gate.json").read_text())
    assert gate["previous_champion"] == "1" and gate["champion_accuracy"] == pytest.approx(first.accuracy)
    assert gate["test"] == "mcnemar" and 0 < gate["p_value"] <= 1 and len(gate["test_split.md5"]) == 32
    second_run = client.get_run(json.loads((root / "artifacts/train/run.json").read_text())["run_id"])
    tags, metrics = second_run.data.tags, second_run.data.metrics
    assert (tags["gate.challenger_version"], tags["gate.champion_version"], tags["gate.test"]) == ("2", "1", "mcnemar")
    assert metrics["gate_p_value"] == pytest.approx(gate["p_value"]) and tags["test_split.md5"] == gate["test_split.md5"]
    assert str(client.get_model_version_by_alias(strong.evaluate.registered_model, "champion").version) == "1"
    assert str(client.get_model_version_by_alias(strong.evaluate.registered_model, "challenger").version) == "2"


def test_the_stage_registers_nothing_while_another_process_holds_the_promotion_lock(prepared, params, tmp_path, monkeypatch):
    """The deterministic half of the test above: with the lock held elsewhere, evaluate gets as far as its
    metrics and then waits; only after the release does a version appear and become champion."""
    import time

    store = f"sqlite:///{tmp_path / 'shared.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    root = _project(tmp_path / "p", prepared, params, min_accuracy=0.5)
    train(_params(root), root, root / "data/prepared", root / "artifacts/train")
    run_id = json.loads((root / "artifacts/train/run.json").read_text())["run_id"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "PYTHONPATH": str(REPO)}
    release = tmp_path / "release"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import pathlib, time, mlflow\n"
        "from tasks.common.registry import promotion_lock\n"
        f"mlflow.set_tracking_uri({store!r})\n"
        "with promotion_lock():\n"
        "    print('held', flush=True)\n"
        f"    while not pathlib.Path({str(release)!r}).exists(): time.sleep(0.1)\n")],
        env=env, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    stage = subprocess.Popen([sys.executable, "-m", "tasks.evaluate", "--root", str(root)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    client = mlflow.MlflowClient(tracking_uri=store)
    deadline = time.monotonic() + 120
    while "test_accuracy" not in client.get_run(run_id).data.metrics:  # logged just before the lock is taken
        assert stage.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    assert client.search_model_versions(f"name='{params.evaluate.registered_model}'") == []
    released_ms = time.time() * 1000
    release.touch()
    output = stage.communicate(timeout=120)[0]
    holder.wait(timeout=30)
    assert stage.returncode == 0, output
    versions = client.search_model_versions(f"name='{params.evaluate.registered_model}'")
    assert [str(v.version) for v in versions] == ["1"]
    assert versions[0].creation_timestamp >= released_ms  # registered only after the other process let go


def test_a_champion_whose_registry_entry_runs_code_is_refused_without_running_it(tmp_path):
    """A poisoned entry on a shared tracking server: a pyfunc model whose loader module is shipped in its `code/`
    folder. MLflow's loader would import it (the test shows it does); the gate reads the entry and refuses it."""
    from tasks.common.tracking import configure
    from tasks.evaluate.champion import champion_scores

    configure(tmp_path, "poisoned")
    marker = tmp_path / "executed"
    module = tmp_path / "poison_loader.py"
    module.write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
                      "def _load_pyfunc(path):\n    raise RuntimeError('never a model')\n")
    data = tmp_path / "weights.bin"
    data.write_bytes(b"\0" * 8)
    with mlflow.start_run():
        mlflow.pyfunc.log_model(name="model", loader_module="poison_loader", data_path=str(data),
                                code_paths=[str(module)], registered_model_name="digits-classifier")
    move_champion("digits-classifier", "1", "promote", "a poisoned entry")
    scored = []
    champion = champion_scores("digits-classifier", lambda predict: scored.append(predict))
    assert champion.version == "1" and champion.scores is None and not scored
    assert "is not a model this project registered, so it is not loaded" in champion.problem
    assert "loader module 'poison_loader'" in champion.problem and "a code folder" in champion.problem
    assert not marker.exists()
    with pytest.raises(Exception):  # what loading it through MLflow's pyfunc flavour does: the module runs
        mlflow.pyfunc.load_model("models:/digits-classifier@champion")
    assert marker.read_text() == "ran"
