import json
import shutil

import numpy as np
import pytest

from tasks.errors import ValidationFailed
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
    assert (tmp_path / "out" / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html").is_file()


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
    with pytest.raises(ValidationFailed, match=r"val: expect_column_distinct_values_to_contain_set\(label\)"):
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
    keep = np.setdiff1d(np.arange(len(y)), sevens[20:])  # 20 sevens left: enough rows, far too few against the rest
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
