"""Stage `validate`: a Great Expectations suite over each split; a failure names every broken expectation."""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.atomic import write_json
from tasks.config import ValidateParams
from tasks.dataset import SPLITS, load_split
from tasks.errors import ValidationFailed

log = logging.getLogger(__name__)
DRIFT_COLUMNS = ("pixel_mean", "pixel_std", "pixel_min", "pixel_max")
NUMERIC_TYPES = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float32", "float64"]
NEW_CATEGORY_TOLERANCE = 0.99  # at least 99 % of a categorical column's values must be categories seen before


@dataclass(frozen=True)
class Failure:
    split: str
    expectation: str
    column: str | None
    observed: str


@dataclass(frozen=True)
class ValidateResult:
    success: bool
    failures: list[Failure] = field(default_factory=list)
    data_docs: Path | None = None


def validate(params: ValidateParams, prepared_dir: Path, out_dir: Path, *, root: Path | None = None,
             experiment: str | None = None) -> ValidateResult:
    """Check every split against the suite, write Data Docs and `report.json`; raise if any check fails.

    With `root` and `experiment`, the outcome and the Data Docs are also logged to MLflow as a run of their
    own (tagged `stage=validate`), pass or fail, before anything is raised.
    """
    import great_expectations as gx  # seconds to import: only here

    from tasks.prepare import prepared_meta

    kind = prepared_meta(prepared_dir)["kind"]
    context = gx.get_context(mode="file", project_root_dir=out_dir)
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context.variables.progress_bars = ProgressBarsConfig(globally=False)  # our own log lines say enough
    source = context.data_sources.add_or_update_pandas("prepared")
    reference_path = Path(out_dir) / "reference.json"
    reference = json.loads(reference_path.read_text()) if reference_path.is_file() else None
    if reference is not None and reference.get("kind", "images") != kind:
        log.info("the reference is a %s data version and this one a %s: drift is not checked", reference.get("kind", "images"), kind)
        reference = None
    if reference is None:
        log.info("no reference data version yet: drift is not checked, and this version becomes the reference")
    failures: list[Failure] = []
    for split_name in SPLITS:
        for asset_name, frame, suite in _tables(split_name, prepared_dir / split_name, kind, params, reference):
            failures += _run_checkpoint(gx, context, source, asset_name, frame, suite, split_name)
    docs = Path(out_dir) / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"
    result = ValidateResult(success=not failures, failures=failures, data_docs=docs)
    report = _report(result)
    if root is not None and experiment is not None:
        report["mlflow_run_id"] = _log_to_mlflow(root, experiment, prepared_dir, result, report)
    write_json(Path(out_dir) / "report.json", report)
    if failures:
        lines = "\n".join(f"  - {f.split}: {f.expectation}({f.column or ''}) observed {f.observed}" for f in failures)
        raise ValidationFailed(f"{len(failures)} expectation(s) failed; Data Docs: {docs}\n{lines}")
    write_json(reference_path, _reference(prepared_dir, kind))  # the last accepted version
    log.info("all splits passed validation; Data Docs: %s", docs)
    return result


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


def table_rows(split_dir: Path) -> pd.DataFrame:
    """A table split's original rows (features as ingested, and the label) with a hash of each row."""
    rows = pd.read_parquet(split_dir / "rows.parquet")
    rows["row_md5"] = pd.util.hash_pandas_object(rows, index=False).map(lambda h: f"{h:016x}")  # duplicates share it
    return rows


def _reference(prepared_dir: Path, kind: str) -> dict:
    """What later versions are compared with, over all splits of this one: statistics, label shares, the schema."""
    from tasks.tables import LABEL, feature_kinds

    splits = [load_split(prepared_dir / s) for s in SPLITS]
    y = np.concatenate([s.y for s in splits])
    labels, counts = np.unique(y, return_counts=True)
    classes = {str(k): float(c / counts.sum()) for k, c in zip(labels.tolist(), counts)}
    if kind == "images":
        rows = image_stats(np.concatenate([s.x for s in splits]), y)
        return {"kind": kind, "image_shape": rows["image_shape"].iloc[0], "classes": classes,
                "columns": {c: {"mean": float(rows[c].mean()), "std": float(rows[c].std())} for c in DRIFT_COLUMNS}}
    rows = pd.concat([pd.read_parquet(prepared_dir / s / "rows.parquet") for s in SPLITS], ignore_index=True)
    numeric, categorical = feature_kinds(rows)
    return {
        "kind": kind, "classes": classes, "label": LABEL,
        "numeric": {c: {"mean": float(rows[c].mean()), "std": float(rows[c].std()), "min": float(rows[c].min()),
                        "max": float(rows[c].max())} for c in numeric},
        "categories": {c: sorted(str(v) for v in rows[c].dropna().unique()) for c in categorical},
    }


def _tables(split_name: str, split_dir: Path, kind: str, params: ValidateParams, reference: dict | None):
    """The two tables checked per split: one row per example, one row per class."""
    split = load_split(split_dir)
    if kind == "images":
        yield f"{split_name}_rows", *_image_checks(image_stats(split.x, split.y), params, reference)
    else:
        yield f"{split_name}_rows", *_table_checks(table_rows(split_dir), params, reference)
    yield f"{split_name}_class_counts", *_class_checks(split.y, params, reference)


def _common_checks(rows: pd.DataFrame, hash_column: str, params: ValidateParams) -> list:
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        gxe.ExpectColumnValuesToBeOfType(column="label", type_="int64"),
        gxe.ExpectColumnValuesToNotBeNull(column="label"),
        gxe.ExpectColumnValuesToBeInSet(column="label", value_set=list(params.labels)),
        gxe.ExpectColumnProportionOfUniqueValuesToBeBetween(column=hash_column, min_value=1 - params.max_duplicate_fraction),
    ]


def _image_checks(rows: pd.DataFrame, params: ValidateParams, reference: dict | None):
    """Per-image statistics, not one column per pixel: the suite stays the same size (and seconds to run) at
    8×8 or 28×28. Against a reference (the last accepted version), each statistic's mean must stay within
    `drift_max_shift` of the reference's standard deviations, and the image shape must match."""
    import great_expectations.expectations as gxe

    checks = [
        gxe.ExpectTableColumnsToMatchOrderedList(column_list=list(rows.columns)),
        *_common_checks(rows, "image_md5", params),
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
        band = params.drift_max_shift * max(ref["std"], 0.01 * (params.value_max - params.value_min))
        checks.append(gxe.ExpectColumnMeanToBeBetween(column=column, min_value=ref["mean"] - band, max_value=ref["mean"] + band))
    return rows, checks


def _table_checks(rows: pd.DataFrame, params: ValidateParams, reference: dict | None):
    """The table's own columns. Against the reference: the same columns with the same kinds, numeric values within
    its range (widened by `table_range_margin`), numeric means within `drift_max_shift` of its standard deviations,
    categorical values among its categories."""
    import great_expectations.expectations as gxe

    from tasks.tables import LABEL, feature_kinds

    numeric, categorical = feature_kinds(rows.drop(columns=["row_md5"]))
    checks = _common_checks(rows, "row_md5", params)
    checks += [gxe.ExpectColumnValuesToNotBeNull(column=c, mostly=1 - params.max_null_fraction) for c in numeric + categorical]
    if reference is not None:
        expected = [*reference["numeric"], *reference["categories"], LABEL, "row_md5"]
        checks.append(gxe.ExpectTableColumnsToMatchSet(column_set=expected, exact_match=True))
        present = set(rows.columns)
        for column, ref in reference["numeric"].items():
            if column not in present:
                continue
            checks.append(gxe.ExpectColumnValuesToBeInTypeList(column=column, type_list=NUMERIC_TYPES))
            margin = params.table_range_margin * (ref["max"] - ref["min"])
            checks.append(gxe.ExpectColumnValuesToBeBetween(column=column, min_value=ref["min"] - margin, max_value=ref["max"] + margin))
            band = params.drift_max_shift * max(ref["std"], 1e-6)
            checks.append(gxe.ExpectColumnMeanToBeBetween(column=column, min_value=ref["mean"] - band, max_value=ref["mean"] + band))
        for column, categories in reference["categories"].items():
            if column in present:
                # `str` is pandas 3's text dtype (ExpectColumnValuesToBeInTypeList does not match it; this does)
                checks.append(gxe.ExpectColumnValuesToBeOfType(column=column, type_="str"))
                checks.append(gxe.ExpectColumnValuesToBeInSet(column=column, value_set=categories, mostly=NEW_CATEGORY_TOLERANCE))
    return rows, checks


def _class_checks(y: np.ndarray, params: ValidateParams, reference: dict | None):
    """Rows per class, balance, and (against the reference) each class's share of the rows."""
    import great_expectations.expectations as gxe

    labels, counts = np.unique(y, return_counts=True)
    per_class = pd.DataFrame({"label": labels, "rows": counts, "share_of_largest": counts / max(counts.max(), 1)})
    checks = [
        gxe.ExpectColumnDistinctValuesToContainSet(column="label", value_set=list(params.labels)),
        gxe.ExpectColumnValuesToBeBetween(column="rows", min_value=params.min_rows_per_class),
        gxe.ExpectColumnValuesToBeBetween(column="share_of_largest", min_value=1 / params.max_class_imbalance),
    ]
    if reference is not None and "classes" in reference:
        shares = counts / max(counts.sum(), 1)
        per_class["share_shift"] = [abs(s - reference["classes"].get(str(k), 0.0)) for k, s in zip(labels.tolist(), shares)]
        checks.append(gxe.ExpectColumnValuesToBeBetween(column="share_shift", max_value=params.max_label_shift))
    return per_class, checks


def _log_to_mlflow(root: Path, experiment: str, prepared_dir: Path, result: ValidateResult, report: dict) -> str:
    """A run of its own for this validation: the outcome, each failure, and the Data Docs site as artifacts."""
    import mlflow

    from tasks import tracking
    from tasks.dataset import directory_md5

    experiment_id = tracking.configure(root, experiment)
    data_md5 = {s: directory_md5(prepared_dir / s) for s in SPLITS}
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"validate {data_md5['train'][:8]}") as run:
        mlflow.set_tags({"stage": "validate", "validation.success": str(result.success).lower(),
                         **{f"data.{s}.md5": h for s, h in data_md5.items()}})
        mlflow.log_metric("failed_expectations", len(result.failures))
        mlflow.log_dict(report, "validation/report.json")
        if result.data_docs is not None and result.data_docs.is_file():
            mlflow.log_artifacts(str(result.data_docs.parent), artifact_path="data_docs")
        if not result.success:
            mlflow.end_run(status="FAILED")
        return run.info.run_id


def _run_checkpoint(gx, context, source, asset_name, frame, expectations, split_name) -> list[Failure]:
    if asset_name in source.get_asset_names():
        asset = source.get_asset(asset_name)
        batch = asset.batch_definitions[0]
    else:
        asset = source.add_dataframe_asset(asset_name)
        batch = asset.add_batch_definition_whole_dataframe("whole")
    suite = context.suites.add_or_update(gx.ExpectationSuite(name=asset_name, expectations=expectations))
    definition = context.validation_definitions.add_or_update(
        gx.ValidationDefinition(name=asset_name, data=batch, suite=suite)
    )
    checkpoint = context.checkpoints.add_or_update(
        gx.Checkpoint(
            name=asset_name,
            validation_definitions=[definition],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs")],
            result_format={"result_format": "SUMMARY"},
        )
    )
    outcome = checkpoint.run(batch_parameters={"dataframe": frame})
    failures = []
    for run in outcome.run_results.values():
        for res in run.results:
            if not res.success:
                cfg = res.expectation_config
                failures.append(
                    Failure(
                        split=split_name,
                        expectation=cfg.type,
                        column=cfg.kwargs.get("column"),
                        observed=_observed(res.result),
                    )
                )
    return failures


def _observed(result: dict) -> str:
    if "observed_value" in result:
        return str(result["observed_value"])
    if "partial_unexpected_list" in result:
        sample = result["partial_unexpected_list"][:5]
        return f"{result.get('unexpected_count')} unexpected value(s), e.g. {sample}"
    return str(result)


def _report(result: ValidateResult) -> dict:
    return {
        "success": result.success,
        "failures": [vars(f) for f in result.failures],
        "data_docs": str(result.data_docs) if result.data_docs else None,
    }
