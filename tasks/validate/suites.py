"""The expectation suites `validate` runs: which tables are checked and what each expectation demands.

Images are checked through one row of statistics per image (not one column per pixel: the suite stays the
same size at 8×8 or 28×28), tables through their own rows, both through one row per class. Thresholds come
from `validate.*` in params.yaml and, for drift, from the reference (the last accepted data version).
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.common.config import ValidateParams

DRIFT_COLUMNS = ("pixel_mean", "pixel_std", "pixel_min", "pixel_max")
NUMERIC_TYPES = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float32", "float64"]


def image_stats(x: np.ndarray, y: np.ndarray) -> pd.DataFrame:
    """One row per image: its label, shape and pixel statistics (the table the suite checks)."""
    pixels = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    shape = "x".join(str(d) for d in np.shape(x)[2:])
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN images: their NaN count names the problem
        return pd.DataFrame({
            "label": y,
            "image_shape": [shape] * len(y),
            "pixel_min": np.nanmin(pixels, axis=1),
            "pixel_max": np.nanmax(pixels, axis=1),
            "pixel_mean": np.nanmean(pixels, axis=1),
            "pixel_std": np.nanstd(pixels, axis=1),
            "nan_pixels": np.isnan(pixels).sum(axis=1),
            "image_md5": [hashlib.md5(row.tobytes()).hexdigest() for row in pixels],  # duplicates share it
        })


def table_rows(split_dir: Path, encoding: dict | None = None) -> pd.DataFrame:
    """A table split's original rows (features as ingested, and the label) with a hash of each row; per text column
    of `encoding` (prepare's), what the model reads of each text: `<column>__chars`, `__tokens` (before cutting at
    the maximum length) and `__unknown_share` (of its tokens, those the vocabulary lacks)."""
    rows = pd.read_parquet(split_dir / "rows.parquet")
    rows["row_md5"] = pd.util.hash_pandas_object(rows, index=False).map(lambda h: f"{h:016x}")  # duplicates share it
    for column in (encoding or {}).get("text", []):
        from tasks.shipped.text import UNK, encode_texts, load_tokenizer

        tokenizer = load_tokenizer(encoding["tokenizer"])
        texts = rows[column["column"]].fillna("").astype(str).tolist()
        ids, counts = encode_texts(tokenizer, texts, column["length"])
        rows[f"{column['column']}{CHARS}"] = [len(t.strip()) for t in texts]
        rows[f"{column['column']}{TOKENS}"] = counts
        kept = np.maximum((ids != 0).sum(1), 1)
        rows[f"{column['column']}{UNKNOWN}"] = (ids == tokenizer.token_to_id(UNK)).sum(1) / kept
    return rows


CHARS, TOKENS, UNKNOWN = "__chars", "__tokens", "__unknown_share"  # the text statistics' column suffixes


def text_checks(rows: pd.DataFrame, encoding: dict, params: ValidateParams, reference: dict | None) -> list:
    """Per text column: few empty texts, few cut at the maximum length, few unknown tokens; against the reference,
    the mean length in tokens and the unknown share each within `drift_max_shift` of its standard deviations."""
    import great_expectations.expectations as gxe

    checks = []
    for spec in encoding.get("text", []):
        c = spec["column"]
        checks += [
            gxe.ExpectColumnValuesToBeBetween(column=c + CHARS, min_value=1, mostly=1 - params.max_empty_text_fraction),
            gxe.ExpectColumnValuesToBeBetween(column=c + TOKENS, max_value=spec["length"],
                                              mostly=1 - params.max_truncated_fraction),
            gxe.ExpectColumnMeanToBeBetween(column=c + UNKNOWN, max_value=params.max_unknown_token_rate)]
        for statistic, ref in (reference or {}).get("text", {}).get(c, {}).items():
            band = drift_band(params, max(ref["std"], 1e-6), len(rows))
            checks.append(gxe.ExpectColumnMeanToBeBetween(column=c + statistic, min_value=ref["mean"] - band,
                                                          max_value=ref["mean"] + band))
    return checks


def drift_band(params: ValidateParams, std: float, rows: int) -> float:
    """How far a split's mean may lie from the reference's: `drift_max_shift` of the reference's standard deviation,
    plus three standard errors of a mean over the split's `rows` values. Without that allowance the same data failed
    its own check on a re-run: a 27-row validation split's mean wanders 0.19 standard deviations by chance alone,
    and 3 of the 13 columns of scikit-learn's wine table were outside 0.25."""
    return params.drift_max_shift * std + 3 * std / np.sqrt(max(rows, 1))


def text_reference(rows: pd.DataFrame, encoding: dict) -> dict:
    """Each text column's mean and spread of length in tokens and of unknown share (what drift compares)."""
    return {spec["column"]: {s: {"mean": float(rows[spec["column"] + s].mean()),
                                 "std": float(rows[spec["column"] + s].std())} for s in (TOKENS, UNKNOWN)}
            for spec in encoding.get("text", [])}


def common_checks(rows: pd.DataFrame, hash_column: str, params: ValidateParams, classes: list[str]) -> list:
    """Every example labelled with a class of the vocabulary (`label` is the class index), few duplicates."""
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        gxe.ExpectColumnValuesToBeOfType(column="label", type_="int64"),
        gxe.ExpectColumnValuesToNotBeNull(column="label"),
        gxe.ExpectColumnValuesToBeInSet(column="label", value_set=list(range(len(classes)))),
        gxe.ExpectColumnProportionOfUniqueValuesToBeBetween(column=hash_column, min_value=1 - params.max_duplicate_fraction),
    ]


def image_checks(rows: pd.DataFrame, params: ValidateParams, reference: dict | None, classes: list[str]):
    """Per-image statistics, not one column per pixel: the suite stays the same size (and seconds to run) at
    8×8 or 28×28. Against a reference (the last accepted version), each statistic's mean must stay within
    `drift_max_shift` of the reference's standard deviations, and the image shape must match."""
    import great_expectations.expectations as gxe

    checks = [
        gxe.ExpectTableColumnsToMatchOrderedList(column_list=list(rows.columns)),
        *common_checks(rows, "image_md5", params, classes),
        gxe.ExpectColumnValuesToBeBetween(column="nan_pixels", min_value=0, max_value=0),
        gxe.ExpectColumnValuesToBeBetween(column="pixel_min", min_value=params.value_min),
        gxe.ExpectColumnValuesToBeBetween(column="pixel_max", max_value=params.value_max),
        gxe.ExpectColumnValuesToBeBetween(column="pixel_std", min_value=0, strict_min=True),  # no constant images
    ]
    shape = "x".join(map(str, params.image_shape)) if params.image_shape else (reference or {}).get("image_shape")
    if shape:
        checks.append(gxe.ExpectColumnValuesToBeInSet(column="image_shape", value_set=[shape]))
    for column, ref in (reference or {"columns": {}})["columns"].items():
        # a floor of 1 % of the value range: a statistic that never varied (every digit's min is 0) may still wobble
        band = drift_band(params, max(ref["std"], 0.01 * (params.value_max - params.value_min)), len(rows))
        checks.append(gxe.ExpectColumnMeanToBeBetween(column=column, min_value=ref["mean"] - band, max_value=ref["mean"] + band))
    return rows, checks


def table_checks(rows: pd.DataFrame, params: ValidateParams, reference: dict | None, classes: list[str],
                 encoding: dict | None = None):
    """The table's own columns. Against the reference: the same columns with the same kinds, numeric values within
    its range (widened by `table_range_margin`), numeric means within `drift_max_shift` of its standard deviations,
    categorical values among its categories (all but `max_new_category_fraction`); text columns by text_checks."""
    import great_expectations.expectations as gxe

    from tasks.common.tables import LABEL, feature_kinds

    text = [c["column"] for c in (encoding or {}).get("text", [])]
    derived = [c + s for c in text for s in (CHARS, TOKENS, UNKNOWN)]
    numeric, categorical = feature_kinds(rows.drop(columns=["row_md5", *derived]), text)
    checks = common_checks(rows, "row_md5", params, classes)
    checks += [gxe.ExpectColumnValuesToNotBeNull(column=c, mostly=1 - params.max_null_fraction) for c in numeric + categorical]
    checks += text_checks(rows, encoding or {}, params, reference)
    if reference is not None:
        expected = [*reference["numeric"], *reference["categories"], *reference.get("text", {}), LABEL, "row_md5",
                    *derived]
        checks.append(gxe.ExpectTableColumnsToMatchSet(column_set=expected, exact_match=True))
        present = set(rows.columns)
        for column, ref in reference["numeric"].items():
            if column not in present:
                continue
            checks.append(gxe.ExpectColumnValuesToBeInTypeList(column=column, type_list=NUMERIC_TYPES))
            margin = params.table_range_margin * (ref["max"] - ref["min"])
            checks.append(gxe.ExpectColumnValuesToBeBetween(column=column, min_value=ref["min"] - margin, max_value=ref["max"] + margin))
            band = drift_band(params, max(ref["std"], 1e-6), len(rows))
            checks.append(gxe.ExpectColumnMeanToBeBetween(column=column, min_value=ref["mean"] - band, max_value=ref["mean"] + band))
        for column, categories in reference["categories"].items():
            if column in present:
                # `str` is pandas 3's text dtype (ExpectColumnValuesToBeInTypeList does not match it; this does)
                checks.append(gxe.ExpectColumnValuesToBeOfType(column=column, type_="str"))
                checks.append(gxe.ExpectColumnValuesToBeInSet(column=column, value_set=categories,
                                                              mostly=1 - params.max_new_category_fraction))
    return rows, checks


def _per_class(y: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """One row per class present: its index, its name, its rows and its share of the largest class's rows."""
    labels, counts = np.unique(y, return_counts=True)
    names = [classes[k] if 0 <= k < len(classes) else f"#{k}" for k in labels.tolist()]
    return pd.DataFrame({"label": labels, "class": names, "rows": counts, "share_of_largest": counts / max(counts.max(), 1)})


def class_checks(y: np.ndarray, params: ValidateParams, reference: dict | None, classes: list[str]):
    """Per split: every class present, balance, and (against the reference) each class's share of the rows."""
    import great_expectations.expectations as gxe

    per_class = _per_class(y, classes)
    checks = [
        gxe.ExpectColumnDistinctValuesToContainSet(column="class", value_set=list(classes)),
        gxe.ExpectColumnValuesToBeBetween(column="share_of_largest", min_value=1 / params.max_class_imbalance),
    ]
    if reference is not None and "classes" in reference:
        shares = per_class["rows"].to_numpy() / max(len(y), 1)
        per_class["share_shift"] = [abs(s - reference["classes"].get(c, 0.0)) for c, s in zip(per_class["class"], shares)]
        checks.append(gxe.ExpectColumnValuesToBeBetween(column="share_shift", max_value=params.max_label_shift))
    return per_class, checks


def version_class_checks(y: np.ndarray, params: ValidateParams, classes: list[str]):
    """Over the whole version (all splits): rows per class, judged where a small dataset has them all, and the
    class names params.yaml expects (validate.labels), when it names any."""
    import great_expectations.expectations as gxe

    per_class = _per_class(y, classes)
    checks = [gxe.ExpectColumnValuesToBeBetween(column="rows", min_value=params.min_rows_per_class)]
    if params.labels:
        checks.append(gxe.ExpectColumnDistinctValuesToEqualSet(column="class", value_set=list(params.labels)))
    return per_class, checks
