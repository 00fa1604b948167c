"""Promotion: the candidate's Bento must serve like the model before `champion` moves; every move is recorded,
and a rollback undoes the last one."""

from __future__ import annotations

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

from tasks.common import registry
from tasks.common.errors import PromotionError
from tasks.common.outputs import BentoBuild, CompressChoice, GateResult, TrainRun
from tasks.promote import promote
from tests.support.bento_builder import DIGIT_CLASSES
from tests.support.processes import REPO

NAME = "digits-classifier"


@pytest.fixture(scope="module")
def bentos(bento_store):
    """A Bento of a small digits model, and one whose model file is broken, so it cannot load."""
    info = {"bentos": [bento_store.bentos("digits")[0], bento_store.bentos("broken")[0]],
            "onnx": str(bento_store.onnx("digits"))}
    return info, bento_store.home


def _version(client, run_id: str) -> str:
    """A registered version (its files do not matter here: promote reads the Bento and the ONNX model)."""
    if not client.search_registered_models(f"name='{NAME}'"):
        client.create_registered_model(NAME)
    return str(client.create_model_version(NAME, f"runs:/{run_id}/model", run_id).version)


@pytest.fixture
def project(tmp_path, prepared, params, bentos, monkeypatch):
    """A project root as `promote` finds it after package: the gate's decision, the Bento, the shipped ONNX."""
    info, bento_home = bentos
    monkeypatch.setenv("BENTOML_HOME", str(bento_home))  # `bentoml serve` runs as a child of this process
    root = tmp_path
    tree = params.as_dict()
    tree["promote"].update(readiness_timeout_seconds=60, readiness_samples=128)
    (root / "params.yaml").write_text(yaml.safe_dump(tree))
    shutil.copytree(prepared, root / "data/prepared")
    for stage in ("evaluate", "compress", "package", "train"):
        (root / "artifacts" / stage).mkdir(parents=True)
    shutil.copyfile(info["onnx"], root / "artifacts/compress/model.onnx")
    CompressChoice(variant="fp32-onnx", reason="the test's", pixel_max=16.0, kind="images", input_shape=[1, 8, 8],
                   served_shape=[8, 8], classes=DIGIT_CLASSES).write(root / "artifacts/compress/choice.json")
    from tasks.common import tracking

    tracking.configure(root, params.base.experiment)
    with mlflow.start_run() as run:
        pass
    TrainRun(run_id=run.info.run_id, experiment_id=run.info.experiment_id).write(root / "artifacts/train/run.json")
    client = mlflow.MlflowClient()
    return root, info, client, [_version(client, run.info.run_id) for _ in range(3)]


def _stage(root: Path, version: str, previous: str | None, bento: str, passed: bool = True):
    from tasks.common.config import load_params

    GateResult(version=version, passed=passed, previous_champion=previous, reason="gate says so", test_split_md5="-",
               test_split_dvc_md5="-").write(root / "artifacts/evaluate/gate.json")
    BentoBuild(bento_tag=bento, model_tag="m:1").write(root / "artifacts/package/bento.json")
    return promote(load_params(root / "params.yaml"), root, root / "data/prepared", root / "artifacts/evaluate",
                   root / "artifacts/compress", root / "artifacts/package", root / "artifacts/train",
                   root / "artifacts/promote")


def _champion() -> str | None:
    return registry.champion_version(NAME)



def test_champion_moves_only_after_the_candidate_bento_answers_like_the_model(project):
    root, info, client, (v1, v2, _) = project
    result = _stage(root, v1, None, info["bentos"][0])
    assert result.promoted and _champion() == v1
    ready = result.readiness
    assert ready["ok"] and ready["samples"] == 128 and ready["label_agreement"] == 1.0
    assert ready["max_probability_diff"] <= 1e-4
    written = json.loads((root / "artifacts/promote/promotion.json").read_text())
    assert written["promoted"] and written["bento_tag"] == info["bentos"][0]
    run = client.get_run(json.loads((root / "artifacts/train/run.json").read_text())["run_id"])
    assert run.data.tags["readiness.ok"] == "true" and run.data.tags["promotion.promoted"] == "true"
    [move] = registry.history(NAME)
    assert (move.action, move.from_version, move.to_version) == ("promote", None, v1) and "serves it" in move.reason

    kept = _stage(root, v2, v1, info["bentos"][0], passed=False)  # the gate said no: no Bento is even started
    assert not kept.promoted and kept.readiness is None and _champion() == v1 and len(registry.history(NAME)) == 1


def test_a_bento_that_answers_differently_from_the_model_leaves_the_champion_untouched(project):
    import torch

    from tasks.compress.variants import export_onnx, servable
    from tasks.nn.models import MLP

    root, info, _, (v1, v2, _) = project
    registry.move_champion(NAME, v1, "promote", "set by the test")
    torch.manual_seed(1)  # the ONNX model in process is now another (untrained) one than the Bento serves
    export_onnx(servable(MLP(64, (64,), 10, dropout=0.0), 16.0), np.zeros((1, 8, 8), np.float32),
                root / "artifacts/compress/model.onnx")
    with pytest.raises(PromotionError, match=r"failed the serving check.*labels \d+\.\d+% equal"):
        _stage(root, v2, v1, info["bentos"][0])
    assert _champion() == v1 and len(registry.history(NAME)) == 1
    assert not (root / "artifacts/promote/promotion.json").exists()


def test_a_bento_that_fails_to_load_leaves_the_champion_untouched(project):
    root, info, _, (v1, v2, _) = project
    registry.move_champion(NAME, v1, "promote", "set by the test")
    with pytest.raises(PromotionError, match="failed the serving check, champion v1 untouched: did not start") as err:
        _stage(root, v2, v1, info["bentos"][1])
    assert "its service failed to start" in str(err.value) and "INVALID_PROTOBUF" in str(err.value)  # the cause, named
    assert _champion() == v1 and [m.to_version for m in registry.history(NAME)] == [v1]


def test_a_gate_decided_against_an_older_champion_does_not_promote(project):
    root, info, _, (v1, v2, v3) = project
    registry.move_champion(NAME, v1, "promote", "another run")
    registry.move_champion(NAME, v2, "promote", "another run, later")
    stale = _stage(root, v3, v1, info["bentos"][0])  # its gate compared with v1; v2 is champion now
    assert not stale.promoted and "the champion moved from v1 to v2" in stale.reason and _champion() == v2
    registry.rollback(NAME)
    again = _stage(root, v2, v1, info["bentos"][0])  # v2 was rolled back: a re-run of its pipeline may not undo that
    assert not again.promoted and f"v{v2} was rolled back" in again.reason and _champion() == v1


def test_promote_promote_rollback_leaves_the_first_champion_and_three_recorded_moves(project):
    root, _, client, (v1, v2, _) = project
    registry.move_champion(NAME, v1, "promote", "first")
    registry.move_champion(NAME, v2, "promote", "second")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    back = subprocess.run([sys.executable, "-m", "cli", "rollback", "--reason", "v2 misbehaves",
                           "--root", str(root)], env=env, capture_output=True, text=True, timeout=120)
    assert back.returncode == 0, back.stderr
    assert f"champion v{v2} -> v{v1}" in back.stdout and _champion() == v1
    moves = registry.history(NAME)
    assert [(m.action, m.from_version, m.to_version) for m in moves] == [
        ("promote", None, v1), ("promote", v1, v2), ("rollback", v2, v1)]
    assert moves[-1].reason == "v2 misbehaves" and all(m.time for m in moves)
    shown = subprocess.run([sys.executable, "-m", "cli", "history", "--root", str(root)], env=env,
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and "3 recorded move(s)" in shown.stdout and "rollback  v2 -> v1" in shown.stdout
    nothing = subprocess.run([sys.executable, "-m", "cli", "rollback", "--root", str(root)], env=env,
                             capture_output=True, text=True, timeout=120)
    assert nothing.returncode == 1 and "has no earlier champion" in nothing.stderr and _champion() == v1
    experiment = client.get_experiment_by_name(registry.history_experiment(NAME))
    assert len(client.search_runs([experiment.experiment_id])) == 3  # the record is in MLflow, one run per move
