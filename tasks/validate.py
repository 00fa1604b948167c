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


def validate(params: ValidateParams, prepared_dir: Path, out_dir: Path) -> ValidateResult:
    """Check every split against the suite, write Data Docs and `report.json`; raise if any check fails."""
    import great_expectations as gx  # seconds to import: only here

    context = gx.get_context(mode="file", project_root_dir=out_dir)
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context.variables.progress_bars = ProgressBarsConfig(globally=False)  # our own log lines say enough
    source = context.data_sources.add_or_update_pandas("prepared")
    reference_path = Path(out_dir) / "reference.json"
    reference = json.loads(reference_path.read_text()) if reference_path.is_file() else None
    if reference is None:
        log.info("no reference data version yet: drift is not checked, and this version becomes the reference")
    failures: list[Failure] = []
    for split_name in SPLITS:
        split = load_split(prepared_dir / split_name)
        for asset_name, frame, suite in _tables(split_name, split.x, split.y, params, reference):
            failures += _run_checkpoint(gx, context, source, asset_name, frame, suite, split_name)
    docs = Path(out_dir) / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"
    result = ValidateResult(success=not failures, failures=failures, data_docs=docs)
    write_json(Path(out_dir) / "report.json", _report(result))
    if failures:
        lines = "\n".join(f"  - {f.split}: {f.expectation}({f.column or ''}) observed {f.observed}" for f in failures)
        raise ValidationFailed(f"{len(failures)} expectation(s) failed; Data Docs: {docs}\n{lines}")
    train = load_split(prepared_dir / "train")
    write_json(reference_path, {"columns": _reference(image_stats(train.x, train.y))})  # the last accepted version
    log.info("all splits passed validation; Data Docs: %s", docs)
    return result


def image_stats(x: np.ndarray, y: np.ndarray) -> pd.DataFrame:
    """One row per image: its label and pixel statistics (the table the suite checks)."""
    pixels = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN images: their NaN count names the problem
        return pd.DataFrame({
            "label": y,
            "pixel_min": np.nanmin(pixels, axis=1),
            "pixel_max": np.nanmax(pixels, axis=1),
            "pixel_mean": np.nanmean(pixels, axis=1),
            "pixel_std": np.nanstd(pixels, axis=1),
            "nan_pixels": np.isnan(pixels).sum(axis=1),
            "image_md5": [hashlib.md5(row.tobytes()).hexdigest() for row in pixels],  # duplicates share it
        })


def _reference(rows: pd.DataFrame) -> dict:
    return {c: {"mean": float(rows[c].mean()), "std": float(rows[c].std())} for c in DRIFT_COLUMNS}


def _tables(split_name: str, x: np.ndarray, y: np.ndarray, params: ValidateParams, reference: dict | None):
    """The two tables checked per split: one row per image (its label and pixel statistics), one row per class.

    Statistics, not one column per pixel: the suite stays the same size (and seconds to run) at 8×8 or 28×28.
    Against a reference (the last accepted version), each statistic's mean must stay within
    `drift_max_shift` of the reference's standard deviations.
    """
    import great_expectations.expectations as gxe

    rows = image_stats(x, y)
    row_checks = [
        gxe.ExpectTableColumnsToMatchOrderedList(column_list=list(rows.columns)),
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        gxe.ExpectColumnValuesToBeOfType(column="label", type_="int64"),
        gxe.ExpectColumnValuesToNotBeNull(column="label"),
        gxe.ExpectColumnValuesToBeInSet(column="label", value_set=list(params.labels)),
        gxe.ExpectColumnValuesToBeBetween(column="nan_pixels", min_value=0, max_value=0),
        gxe.ExpectColumnValuesToBeBetween(column="pixel_min", min_value=params.value_min),
        gxe.ExpectColumnValuesToBeBetween(column="pixel_max", max_value=params.value_max),
        gxe.ExpectColumnValuesToBeBetween(column="pixel_std", min_value=0, strict_min=True),  # no constant images
        gxe.ExpectColumnProportionOfUniqueValuesToBeBetween(column="image_md5", min_value=1 - params.max_duplicate_fraction),
    ]
    for column, ref in (reference or {"columns": {}})["columns"].items():
        # a floor of 1 % of the value range: a statistic that never varied (every digit's min is 0) may still wobble
        band = params.drift_max_shift * max(ref["std"], 0.01 * (params.value_max - params.value_min))
        row_checks.append(gxe.ExpectColumnMeanToBeBetween(column=column, min_value=ref["mean"] - band, max_value=ref["mean"] + band))
    labels, counts = np.unique(y, return_counts=True)
    per_class = pd.DataFrame({"label": labels, "rows": counts, "share_of_largest": counts / max(counts.max(), 1)})
    class_checks = [
        gxe.ExpectColumnDistinctValuesToContainSet(column="label", value_set=list(params.labels)),
        gxe.ExpectColumnValuesToBeBetween(column="rows", min_value=params.min_rows_per_class),
        gxe.ExpectColumnValuesToBeBetween(column="share_of_largest", min_value=1 / params.max_class_imbalance),
    ]
    yield f"{split_name}_rows", rows, row_checks
    yield f"{split_name}_class_counts", per_class, class_checks


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
