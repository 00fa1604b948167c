"""The table source: the digits written out as a CSV and a Parquet file, taken in, encoded, validated and trained on."""

import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_digits

from tasks.common.config import IngestParams, PrepareParams, ValidateParams
from tasks.common.errors import DataError, ValidationFailed
from tasks.ingest import ingest
from tasks.prepare import prepare
from tasks.validate import validate


def digits_table(seed: int = 0) -> pd.DataFrame:
    """16 numeric features (2×2-pooled ink), a categorical one, 2 % missing values in two columns, label `digit`."""
    bunch = load_digits()
    pooled = bunch.images.reshape(-1, 4, 2, 4, 2).sum(axis=(2, 4)).reshape(-1, 16)
    frame = pd.DataFrame(pooled, columns=[f"ink_{i:02d}" for i in range(16)])
    total = pooled.sum(axis=1)
    frame["stroke"] = pd.cut(total, bins=np.quantile(total, [0, 1 / 3, 2 / 3, 1]), labels=["thin", "medium", "bold"],
                             include_lowest=True).astype(str)
    rng = np.random.default_rng(seed)
    for column in ("ink_05", "stroke"):
        frame.loc[rng.random(len(frame)) < 0.02, column] = np.nan
    frame["digit"] = bunch.target
    return frame


@pytest.fixture(scope="module")
def table_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tables")
    frame = digits_table()
    frame.to_csv(folder / "digits.csv", index=False)
    frame.to_parquet(folder / "digits.parquet", index=False)
    return folder


def _ingest(root, path, label_column="digit"):
    return ingest(IngestParams(source="table", path=str(path), label_column=label_column), root, root / "raw")


@pytest.mark.parametrize("name", ["digits.csv", "digits.parquet"])
def test_csv_and_parquet_are_taken_in_alike(tmp_path, table_files, name):
    result = _ingest(tmp_path, table_files / name)
    assert result.rows == 1797 and result.image_shape == (17,)
    raw = pd.read_parquet(tmp_path / "raw" / "table.parquet")
    assert list(raw.columns)[-1] == "label" and "digit" not in raw.columns
    expected = digits_table()
    np.testing.assert_array_equal(raw["label"].to_numpy(), expected["digit"].to_numpy())
    np.testing.assert_allclose(raw["ink_05"].to_numpy(), expected["ink_05"].to_numpy())  # NaNs where they were
    assert raw["stroke"].isna().sum() == expected["stroke"].isna().sum() > 0


def test_a_table_without_its_label_column_or_rows_is_named(tmp_path, table_files):
    with pytest.raises(DataError, match=r"digits.csv: no label column 'target'"):
        _ingest(tmp_path, table_files / "digits.csv", label_column="target")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match=r"empty.csv: the file is empty"):
        _ingest(tmp_path, tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text("ink_00,digit\n")
    with pytest.raises(DataError, match=r"header.csv: has a header but no rows"):
        _ingest(tmp_path, tmp_path / "header.csv")
    digits_table().assign(digit=lambda f: f["digit"] + 0.5).to_csv(tmp_path / "amounts.csv", index=False)
    with pytest.raises(DataError, match=r"amounts.csv: labels: the label 0.5 is a fractional number: this looks like "
                                        r"a regression target"):
        _ingest(tmp_path, tmp_path / "amounts.csv")
    digits_table().assign(digit=lambda f: None).to_csv(tmp_path / "blank.csv", index=False)
    with pytest.raises(DataError, match=r"blank.csv: \d+ row\(s\) have no label in 'digit'"):
        _ingest(tmp_path, tmp_path / "blank.csv")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match=r"bad.parquet: not a readable parquet table"):
        _ingest(tmp_path, tmp_path / "bad.parquet")


@pytest.fixture(scope="module")
def table_prepared(tmp_path_factory, table_files):
    root = tmp_path_factory.mktemp("table")
    _ingest(root, table_files / "digits.parquet")
    prepare(PrepareParams(), 42, root / "raw", root / "prepared")
    return root / "prepared"


def test_the_encoding_is_fitted_on_the_train_split_only(table_prepared):
    meta = json.loads((table_prepared / "meta.json").read_text())
    assert meta["kind"] == "table" and meta["features"] == 16 + 3  # 16 scaled numerics, one-hot of 3 strokes
    train = pd.read_parquet(table_prepared / "train" / "rows.parquet")
    everything = pd.concat([train, *(pd.read_parquet(table_prepared / s / "rows.parquet") for s in ("val", "test"))])
    spec = {c["column"]: c for c in meta["encoding"]["numeric"]}
    assert spec["ink_05"]["fill"] == pytest.approx(train["ink_05"].median())
    assert spec["ink_03"]["mean"] == pytest.approx(train["ink_03"].mean())
    assert spec["ink_03"]["mean"] != pytest.approx(everything["ink_03"].mean(), abs=1e-9)
    assert meta["encoding"]["categorical"][0]["categories"] == ["bold", "medium", "thin"]
    x = np.load(table_prepared / "train" / "x.npy")
    assert x.shape == (len(train), 19) and np.isfinite(x).all()  # imputed: no NaN reaches the model
    np.testing.assert_allclose(x[:, :16].mean(axis=0), 0, atol=1e-5)  # standardised on train
    assert set(np.unique(x[:, 16:])) == {0.0, 1.0}


def test_served_rows_encode_exactly_as_prepare_encoded_them(table_prepared):
    """tasks/shipped/rows.py (NumPy, in the Bento) against scikit-learn's output on the same rows, NaNs included."""
    from tasks.shipped.rows import BadRow, encode_rows

    meta = json.loads((table_prepared / "meta.json").read_text())
    test = pd.read_parquet(table_prepared / "test" / "rows.parquet").drop(columns=["label"])
    rows = [{k: (None if pd.isna(v) else v.item() if hasattr(v, "item") else v) for k, v in row.items()}
            for row in test.to_dict(orient="records")]
    assert any(v is None for row in rows for v in row.values())  # the missing values are exercised
    np.testing.assert_allclose(encode_rows(rows, meta["encoding"]), np.load(table_prepared / "test" / "x.npy"), atol=1e-5)
    unseen = encode_rows([{**rows[0], "stroke": "dotted"}], meta["encoding"])
    assert unseen[0, 16:].tolist() == [0.0, 0.0, 0.0]  # an unseen category: all zeros, as OneHotEncoder(ignore)
    for bad, message in (({**rows[0], "ink_00": "dark"}, "column 'ink_00': expected a number or null, got 'dark'"),
                         ({k: v for k, v in rows[0].items() if k != "ink_00"}, "missing columns ['ink_00']"),
                         ({**rows[0], "colour": "red"}, "unknown columns ['colour']")):
        with pytest.raises(BadRow, match=re.escape(message)):
            encode_rows([rows[0], bad], meta["encoding"])


@pytest.fixture
def accepted(table_prepared, tmp_path):
    """A copy of the prepared table that passed validation once, so it is the reference."""
    copy = tmp_path / "prepared"
    shutil.copytree(table_prepared, copy)
    validate(ValidateParams(), copy, tmp_path / "out")
    return copy


def _corrupt(prepared, change, splits=("train", "val", "test")):
    for split in splits:
        path = prepared / split / "rows.parquet"
        change(pd.read_parquet(path)).to_parquet(path, index=False)


def _failures(prepared, out) -> str:
    with pytest.raises(ValidationFailed) as info:
        validate(ValidateParams(), prepared, out)
    return str(info.value)


def test_the_digits_table_passes_and_sets_the_reference(accepted, tmp_path):
    reference = json.loads((tmp_path / "out" / "reference.json").read_text())
    assert reference["kind"] == "table" and set(reference["categories"]) == {"stroke"} and len(reference["numeric"]) == 16
    assert validate(ValidateParams(), accepted, tmp_path / "out").success  # the same data against itself


def test_a_renamed_column_is_named(accepted, tmp_path):
    _corrupt(accepted, lambda f: f.rename(columns={"ink_07": "ink_7"}))
    assert "train: expect_table_columns_to_match_set() observed" in _failures(accepted, tmp_path / "out")


def test_too_many_missing_values_are_named(accepted, tmp_path):
    _corrupt(accepted, lambda f: f.assign(ink_02=f["ink_02"].mask(np.arange(len(f)) % 5 < 2)), splits=("val",))  # 40 %
    message = _failures(accepted, tmp_path / "out")
    assert "val: expect_column_values_to_not_be_null(ink_02)" in message


def test_an_unseen_category_and_a_text_column_where_numbers_were_are_named(accepted, tmp_path):
    def change(f):
        f["stroke"] = f["stroke"].where(np.arange(len(f)) % 10 != 0, "smudged")
        f["ink_09"] = f["ink_09"].map(lambda v: f"{v:g}")
        return f
    _corrupt(accepted, change, splits=("test",))
    message = _failures(accepted, tmp_path / "out")
    assert "test: expect_column_values_to_be_in_set(stroke)" in message and "smudged" in message
    assert "test: expect_column_values_to_be_in_type_list(ink_09)" in message


def test_out_of_range_values_and_a_shifted_mean_are_named(accepted, tmp_path):
    _corrupt(accepted, lambda f: f.assign(ink_00=f["ink_00"].where(np.arange(len(f)) != 3, 500.0),
                                          ink_10=f["ink_10"] + 12.0))
    message = _failures(accepted, tmp_path / "out")
    assert "train: expect_column_values_to_be_between(ink_00)" in message and "[500.0]" in message
    assert "train: expect_column_mean_to_be_between(ink_10)" in message


def test_a_shifted_label_distribution_is_named(accepted, tmp_path):
    """Most of the zeros gone: every class still present and balanced enough, but the shares moved."""
    for split in ("train", "val", "test"):
        rows = pd.read_parquet(accepted / split / "rows.parquet")
        keep = (rows["label"] != 0).to_numpy() | (np.arange(len(rows)) % 3 == 0)
        rows[keep].to_parquet(accepted / split / "rows.parquet", index=False)
        for name in ("x", "y"):
            np.save(accepted / split / f"{name}.npy", np.load(accepted / split / f"{name}.npy")[keep])
    message = _failures(accepted, tmp_path / "out")
    assert "train: expect_column_values_to_be_between(share_shift)" in message
    assert "share_of_largest" not in message


def test_the_label_column_is_found_by_name_or_the_columns_are_listed(tmp_path):
    from tasks.common.config import IngestParams

    pd.DataFrame({"height": [1.0, 2.0], "Species": ["a", "b"]}).to_csv(tmp_path / "found.tsv", sep="\t", index=False)
    ingest(IngestParams(path=str(tmp_path / "found.tsv")), tmp_path, tmp_path / "raw")  # auto: a TSV, column Species
    assert json.loads((tmp_path / "raw" / "meta.json").read_text())["classes"] == ["a", "b"]
    pd.DataFrame({"height": [1.0, 2.0], "kind": ["a", "b"]}).to_csv(tmp_path / "unknown.csv", index=False)
    with pytest.raises(DataError, match=r"cannot tell which column holds the labels .* columns are \['height', 'kind'\]"):
        ingest(IngestParams(path=str(tmp_path / "unknown.csv")), tmp_path, tmp_path / "raw")


def test_a_small_public_table_validated_again_passes_its_own_drift_checks(tmp_path):
    """scikit-learn's wine table (178 rows, 13 numeric columns): its 27-row validation split's means wander from
    the whole version's by chance; validated a second time against itself as the reference, it must still pass."""
    from sklearn.datasets import load_wine

    wine = load_wine(as_frame=True).frame
    wine.to_csv(tmp_path / "wine.csv", index=False)
    _ingest(tmp_path, tmp_path / "wine.csv", label_column="target")
    prepare(PrepareParams(), 42, tmp_path / "raw", tmp_path / "prepared")
    validate(ValidateParams(), tmp_path / "prepared", tmp_path / "out")
    assert (tmp_path / "out" / "reference.json").is_file()
    validate(ValidateParams(), tmp_path / "prepared", tmp_path / "out")  # against the reference it just wrote
