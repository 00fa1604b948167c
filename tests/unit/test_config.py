import pytest
import yaml

from tasks.common.config import Params, load_params
from tasks.common.errors import ConfigError
from tests.support.processes import REPO


def test_shipped_params_load_into_every_section():
    params = load_params(REPO / "params.yaml")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert set(raw) == set(params.as_dict())
    assert params.as_dict() == Params.model_validate(raw).as_dict()


def test_every_param_key_named_in_dvc_yaml_exists():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        for key in stage.get("params", []):
            node = raw
            for part in key.split("."):
                assert part in node, f"dvc.yaml stage {name} names params key {key!r}, absent from params.yaml"
                node = node[part]


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match=r"train\.epochz"):
        load_params(path)


def test_ill_typed_value_is_named(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  lr: fast\n")
    with pytest.raises(ConfigError, match=r"train\.lr"):
        load_params(path)


def test_fractions_must_leave_training_data(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("prepare:\n  val_fraction: 0.5\n  test_fraction: 0.45\n")
    with pytest.raises(ConfigError, match="val_fraction"):
        load_params(path)


def test_arrays_source_needs_a_path(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("ingest:\n  source: arrays\n")
    with pytest.raises(ConfigError, match="ingest.path"):
        load_params(path)


def test_expected_class_names_are_read_as_ingest_names_classes():
    from tasks.common.config import ValidateParams

    assert ValidateParams(labels=[0, 1.0, True, "cat"]).labels == ("0", "1", "True", "cat")


def test_names_follow_the_dataset_unless_set():
    from tasks.common.config import Params

    derived = Params.model_validate({"ingest": {"path": "data/sources/Loans 2024.csv"}})
    assert (derived.base.name, derived.base.experiment, derived.evaluate.registered_model, derived.package.bento_model,
            derived.package.service_name) == ("loans-2024", "loans-2024-pipeline", "loans-2024-classifier",
                                              "loans-2024-classifier", "loans_2024_classifier")
    assert Params().evaluate.registered_model == "digits-classifier"
    chosen = Params.model_validate({"base": {"name": "fraud"}, "evaluate": {"registered_model": "fraud-v2"}})
    assert chosen.evaluate.registered_model == "fraud-v2" and chosen.package.bento_model == "fraud-classifier"
