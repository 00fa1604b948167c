"""The flow's own logic without running stages: overrides, what is retried, the workspace lock."""

import shutil
from pathlib import Path

import pytest
import yaml

from flows.dag import StageFailed
from flows.overrides import applied, overridden_text
from flows.overrides import parse_assignment
from flows.pipeline import WorkspaceBusy, _transient, pipeline
from tasks.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_an_override_changes_the_value_and_keeps_every_comment():
    original = (REPO / "params.yaml").read_text()
    text = overridden_text(original, {"train.epochs": 5, "train.augment.rotation": 0.0, "ingest.source": "idx"})
    tree = yaml.safe_load(text)
    assert tree["train"]["epochs"] == 5 and tree["train"]["augment"]["rotation"] == 0.0 and tree["ingest"]["source"] == "idx"
    comments = [line.split("#", 1)[1] for line in original.splitlines() if "#" in line]
    assert all(c in text for c in comments)
    assert len(text.splitlines()) == len(original.splitlines()) + 2  # `augment:` and `rotation:` were defaults


def test_unknown_or_invalid_overrides_are_refused_and_params_yaml_is_put_back(tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copyfile(REPO / "params.yaml", params)
    original = params.read_bytes()
    with pytest.raises(ConfigError, match="refused: train.epoch: Extra inputs are not permitted"):
        with applied(params, {"train.epoch": 5}):
            pass
    with pytest.raises(ConfigError, match="refused: train.epochs: Input should be greater than or equal to 1"):
        with applied(params, {"train.epochs": -1}):
            pass
    with pytest.raises(RuntimeError, match="a stage blew up"):
        with applied(params, {"train.epochs": 3}):
            assert yaml.safe_load(params.read_text())["train"]["epochs"] == 3
            raise RuntimeError("a stage blew up")
    assert params.read_bytes() == original


def test_set_values_are_read_as_yaml():
    assert parse_assignment("train.epochs=20") == ("train.epochs", 20)
    assert parse_assignment("train.lr=0.001") == ("train.lr", 0.001)
    assert parse_assignment("ingest.image_size=[16, 16]") == ("ingest.image_size", [16, 16])
    assert parse_assignment("ingest.source=idx") == ("ingest.source", "idx")


class _State:
    def __init__(self, data):
        self.data = data


@pytest.mark.parametrize("error, retried", [
    ("ValidationFailed", False), ("DataError", False), ("ConfigError", False), ("PromotionError", False),
    ("", True),  # no pipeline error reported: a crash, a kill, a lost connection
])
def test_only_transient_stage_failures_are_retried(error, retried):
    assert _transient(None, None, _State(StageFailed("stage 'x' failed", error))) is retried
    assert _transient(None, None, _State(ValueError("not a stage failure"))) is False


def test_a_held_workspace_refuses_a_second_run_before_anything_runs(tmp_path):
    from filelock import FileLock

    with FileLock(str(tmp_path / ".pipeline.lock")):
        with pytest.raises(WorkspaceBusy, match="refused rather than interleaved"):
            pipeline.fn(root=str(tmp_path))
