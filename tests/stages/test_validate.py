import json
import shutil

import numpy as np
import pytest

from tasks.common.errors import ValidationFailed
from tasks.validate import validate


def test_bundled_digits_pass_and_data_docs_are_written(prepared, params, tmp_path):
    result = validate(params.validate_, prepared, tmp_path / "out")
    assert result.success and not result.failures
    assert result.data_docs.is_file()
    assert json.loads((tmp_path / "out" / "report.json").read_text())["success"] is True


@pytest.fixture
def corrupted(prepared, tmp_path):
    """A writable copy of the prepared splits."""
    copy = tmp_path / "prepared"
    shutil.copytree(prepared, copy)
    return copy


def test_label_outside_the_set_is_named_with_its_value(corrupted, params, tmp_path):
    y = np.load(corrupted / "train" / "y.npy")
    y[:3] = 10
    np.save(corrupted / "train" / "y.npy", y)
    with pytest.raises(ValidationFailed) as info:
        validate(params.validate_, corrupted, tmp_path / "out")
    message = str(info.value)
    assert "train: expect_column_values_to_be_in_set(label)" in message and "[10, 10, 10]" in message
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["success"] is False
    site = tmp_path / "out" / "gx" / "uncommitted" / "data_docs" / "local_site"
    assert (site / "index.html").is_file()
    pages = {c["page"] for c in report["checks"] if c["page"]}  # every checkpoint's page, built once at the end
    assert len(pages) == 7 and all((site / page).is_file() for page in pages), sorted(pages)


def test_out_of_range_pixels_and_nans_are_named(corrupted, params, tmp_path):
    x = np.load(corrupted / "test" / "x.npy")
    x[0, 0, 0, 3] = 7.5
    x[1, 0, 2, 2] = np.nan
    np.save(corrupted / "test" / "x.npy", x)
    with pytest.raises(ValidationFailed) as info:
        validate(params.validate_, corrupted, tmp_path / "out")
    message = str(info.value)
    assert "test: expect_column_values_to_be_between(pixel_max)" in message and "[7.5]" in message
    assert "test: expect_column_values_to_be_between(nan_pixels)" in message and "[1]" in message


def test_a_constant_image_is_named(corrupted, params, tmp_path):
    x = np.load(corrupted / "train" / "x.npy")
    x[5] = 0.25
    np.save(corrupted / "train" / "x.npy", x)
    with pytest.raises(ValidationFailed, match=r"train: expect_column_values_to_be_between\(pixel_std\) observed 1 unexpected"):
        validate(params.validate_, corrupted, tmp_path / "out")


def test_a_missing_class_is_named(corrupted, params, tmp_path):
    x, y = np.load(corrupted / "val" / "x.npy"), np.load(corrupted / "val" / "y.npy")
    keep = y != 4
    np.save(corrupted / "val" / "x.npy", x[keep])
    np.save(corrupted / "val" / "y.npy", y[keep])
    with pytest.raises(ValidationFailed, match=r"val: expect_column_distinct_values_to_contain_set\(class\) observed "
                                               r"missing \['4'\]"):
        validate(params.validate_, corrupted, tmp_path / "out")


def test_heavy_duplication_is_named(corrupted, params, tmp_path):
    x = np.load(corrupted / "train" / "x.npy")
    x[: len(x) // 5] = x[0]  # a fifth of the split is one image
    np.save(corrupted / "train" / "x.npy", x)
    with pytest.raises(ValidationFailed, match=r"train: expect_column_proportion_of_unique_values_to_be_between\(image_md5\)"):
        validate(params.validate_, corrupted, tmp_path / "out")


def test_a_starved_class_breaks_the_balance(corrupted, params, tmp_path):
    x, y = np.load(corrupted / "train" / "x.npy"), np.load(corrupted / "train" / "y.npy")
    sevens = np.flatnonzero(y == 7)
    keep = np.setdiff1d(np.arange(len(y)), sevens[10:])  # 10 sevens left: enough over the version, too few (1/12 of
    # the largest class) against the rest: beyond max_class_imbalance 10
    np.save(corrupted / "train" / "x.npy", x[keep])
    np.save(corrupted / "train" / "y.npy", y[keep])
    with pytest.raises(ValidationFailed) as info:
        validate(params.validate_, corrupted, tmp_path / "out")
    assert "train: expect_column_values_to_be_between(share_of_largest)" in str(info.value)
    assert "expect_column_values_to_be_between(rows)" not in str(info.value)


def test_drift_against_the_last_accepted_version_is_named(corrupted, params, tmp_path):
    out = tmp_path / "out"
    validate(params.validate_, corrupted, out)  # accepted: becomes the reference
    reference = json.loads((out / "reference.json").read_text())["columns"]
    assert set(reference) == {"pixel_mean", "pixel_std", "pixel_min", "pixel_max"}
    validate(params.validate_, corrupted, out)  # the same data against itself: no drift
    for split in ("train", "val", "test"):
        x = np.load(corrupted / split / "x.npy")
        np.save(corrupted / split / "x.npy", (x * 0.7).astype(np.float32))  # fainter ink: in range, not NaN, not constant
    with pytest.raises(ValidationFailed) as info:
        validate(params.validate_, corrupted, out)
    assert "train: expect_column_mean_to_be_between(pixel_mean)" in str(info.value)
    assert json.loads((out / "reference.json").read_text())["columns"] == reference  # a rejected version is no reference


def test_a_wrong_image_shape_is_named(corrupted, params, tmp_path):
    out = tmp_path / "out"
    validate(params.validate_, corrupted, out)  # accepted 8×8 images: the reference shape
    for split in ("train", "val", "test"):
        x = np.load(corrupted / split / "x.npy")
        np.save(corrupted / split / "x.npy", np.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1))))  # 9×9, otherwise plausible
    with pytest.raises(ValidationFailed) as info:
        validate(params.validate_, corrupted, out)
    assert "train: expect_column_values_to_be_in_set(image_shape)" in str(info.value) and "9x9" in str(info.value)
    explicit = params.validate_.model_copy(update={"image_shape": (8, 8)})
    with pytest.raises(ValidationFailed, match=r"expect_column_values_to_be_in_set\(image_shape\)"):
        validate(explicit, corrupted, tmp_path / "fresh")  # no reference there: the configured shape still applies


def test_a_shifted_label_distribution_is_named(corrupted, params, tmp_path):
    out = tmp_path / "out"
    validate(params.validate_, corrupted, out)
    for split in ("train", "val", "test"):
        x, y = np.load(corrupted / split / "x.npy"), np.load(corrupted / split / "y.npy")
        keep = (y != 0) | (np.arange(len(y)) % 3 == 0)  # two thirds of the zeros gone
        np.save(corrupted / split / "x.npy", x[keep])
        np.save(corrupted / split / "y.npy", y[keep])
    with pytest.raises(ValidationFailed) as info:
        validate(params.validate_, corrupted, out)
    assert "train: expect_column_values_to_be_between(share_shift)" in str(info.value)


def test_the_outcome_and_data_docs_are_logged_to_mlflow_pass_or_fail(corrupted, params, tmp_path):
    from mlflow.tracking import MlflowClient

    from tasks.common.tracking import configure

    passed = validate(params.validate_, corrupted, tmp_path / "out", root=tmp_path, experiment="checks")
    assert passed.success
    y = np.load(corrupted / "train" / "y.npy")
    y[0] = 42
    np.save(corrupted / "train" / "y.npy", y)
    with pytest.raises(ValidationFailed):
        validate(params.validate_, corrupted, tmp_path / "out", root=tmp_path, experiment="checks")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    configure(tmp_path, "checks")
    client = MlflowClient()
    failed = client.get_run(report["mlflow_run_id"])
    assert failed.info.status == "FAILED" and failed.data.tags["validation.success"] == "false"
    assert failed.data.metrics["failed_expectations"] == len(report["failures"]) >= 1
    wanted = {"split": "train", "expectation": "expect_column_values_to_be_in_set", "column": "label",
              "observed": "1 unexpected value(s), e.g. [42]", "limit": "value_set=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]",
              "passed": False}
    assert any(wanted.items() <= f.items() and f["page"].startswith("validations/") for f in report["failures"])
    assert len(report["checks"]) > len(report["failures"]) and all(not f["passed"] for f in report["failures"])
    docs = [a.path for a in client.list_artifacts(failed.info.run_id, "data_docs")]
    assert {"data_docs/index.html", "data_docs/report.html", "data_docs/static"} <= set(docs)
    vendored = [a.path for a in client.list_artifacts(failed.info.run_id, "data_docs/static/vendor")]
    assert "data_docs/static/vendor/bootstrap-4.3.1" in vendored  # MLflow's copy renders offline too
    runs = client.search_runs([failed.info.experiment_id], "tags.stage = 'validate'")
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED"]


def test_test_rows_identical_to_training_rows_are_named_as_leakage(corrupted, params, tmp_path):
    train_x = np.load(corrupted / "train" / "x.npy")
    x = np.load(corrupted / "test" / "x.npy")
    x[[4, 9]] = train_x[[17, 3]]  # two test images copied from the training split
    np.save(corrupted / "test" / "x.npy", x)
    with pytest.raises(ValidationFailed) as info:
        validate(params.validate_, corrupted, tmp_path / "out")
    assert "test: no_leakage_from_train(rows) observed 2 of 360 test rows are identical to train rows (test row 4 = " \
           "train row 17, test row 9 = train row 3); limit: max_leaked_fraction=0" in str(info.value)
    tolerant = params.validate_.model_copy(update={"max_leaked_fraction": 0.01})
    assert validate(tolerant, corrupted, tmp_path / "tolerant").success  # 2 of 360 is within 1 %
    # the copies' labels: reported when they differ from the original's (not a failure: annotators disagree)
    train_y, y = np.load(corrupted / "train" / "y.npy"), np.load(corrupted / "test" / "y.npy")
    differing = int(y[4] != train_y[17]) + int(y[9] != train_y[3])
    report = json.loads((tmp_path / "tolerant" / "report.json").read_text())
    assert differing and report["conflicting_labels"]["examples"] == differing


def test_a_later_version_that_breaks_the_data_contract_is_refused_naming_each_difference(corrupted, params, tmp_path):
    out = tmp_path / "out"
    validate(params.validate_, corrupted, out)  # accepted: the contract is frozen
    assert json.loads((out / "reference.json").read_text())["contract"]["classes"] == [str(k) for k in range(10)]
    meta = json.loads((corrupted / "meta.json").read_text())
    meta["classes"] = [*meta["classes"][:9], "nine?", "ten"]  # a renamed class and a new one
    meta["channels"] = 3
    (corrupted / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValidationFailed) as info:
        validate(params.validate_, corrupted, out)
    message = str(info.value)
    assert "data contract, channels: the contract says 1, this version has 3" in message
    assert "data contract, classes: missing ['9']; new ['nine?', 'ten']" in message and "--new-dataset" in message
    assert json.loads((out / "reference.json").read_text())["contract"]["channels"] == 1  # the contract stays


@pytest.mark.slow
def test_a_tracking_server_that_stops_answering_is_named_and_the_run_finishes_once_it_is_back(prepared, params,
                                                                                           tmp_path):
    """The validate stage against an `mlflow server` that was stopped: one line naming the server (exit 6, retried
    by the flow), no report written; the same command once a server answers there again finishes the job."""
    import os
    import subprocess
    import sys

    import yaml

    from tests.support.processes import REPO, free_port
    from tests.support.servers import mlflow_server

    root = tmp_path / "project"
    shutil.copytree(prepared, root / "data" / "prepared")
    (root / "params.yaml").write_text(yaml.safe_dump(params.as_dict()))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": url,
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    stage = [sys.executable, "-m", "tasks.validate", "--root", str(root)]
    lost = subprocess.run(stage, env=env, capture_output=True, text=True, timeout=300)
    assert lost.returncode == 6, lost.stderr[-2000:]
    line = [l for l in lost.stderr.splitlines() if "error in stage validate" in l]
    assert line and f"TrackingServerLost: the MLflow tracking server at {url} did not answer" in line[0], lost.stderr
    assert "Traceback" not in lost.stderr and not (root / "artifacts/validate/report.json").exists()
    with mlflow_server(f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "server-artifacts", port=port):
        back = subprocess.run(stage, env=env, capture_output=True, text=True, timeout=300)
    assert back.returncode == 0, back.stderr[-2000:]
    assert json.loads((root / "artifacts/validate/report.json").read_text())["success"] is True
