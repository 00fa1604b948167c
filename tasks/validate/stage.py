"""Stage `validate`: a Great Expectations suite over each split; a failure names every broken expectation."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.common.atomic import write_json
from tasks.common.config import Params, ValidateParams
from tasks.common.dataset import SPLITS, load_split
from tasks.common.errors import ValidationFailed
from tasks.common.layout import Layout
from tasks.validate import contract, leakage, suites

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Failure:
    split: str
    expectation: str
    column: str | None
    observed: str
    limit: str = ""  # what the expectation demands, e.g. "min_value=20"


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

    from tasks.common.dataset import prepared_meta

    data = prepared_meta(prepared_dir)
    kind = data.kind
    context = gx.get_context(mode="file", project_root_dir=out_dir)
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context.variables.progress_bars = ProgressBarsConfig(globally=False)  # our own log lines say enough
    source = context.data_sources.add_or_update_pandas("prepared")
    reference_path = Path(out_dir) / "reference.json"
    reference = json.loads(reference_path.read_text()) if reference_path.is_file() else None
    if reference is not None and "contract" not in reference:
        log.info("the reference predates data contracts: drift is not checked, and this version sets the contract")
        reference = None
    found = contract.contract_of(data)
    broken = contract.differences(reference["contract"], found) if reference is not None else []
    failures = [Failure("contract", "data_contract", p.split(":")[0], p.split(": ", 1)[1], "the frozen contract")
                for p in broken]
    if broken:  # another dataset: its drift against this one means nothing
        reference = None
    elif reference is None:
        log.info("no reference data version yet: drift is not checked, and this version sets the data contract: %s",
                 json.dumps(found)[:500])
    for split_name in SPLITS:
        for asset_name, frame, suite in _tables(split_name, prepared_dir / split_name, kind, params, reference, data.classes):
            failures += _run_checkpoint(gx, context, source, asset_name, frame, suite, split_name)
    everything = np.concatenate([load_split(prepared_dir / s, mmap=True).y for s in SPLITS])
    frame, suite = suites.version_class_checks(everything, params, data.classes)  # rows per class: over the version
    failures += _run_checkpoint(gx, context, source, "all_class_counts", frame, suite, "all splits")
    failures += _leakage(prepared_dir, kind, params.max_leaked_fraction)
    docs = Path(out_dir) / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"
    result = ValidateResult(success=not failures, failures=failures, data_docs=docs)
    report = {**_report(result), "contract": found, "conflicting_labels": _conflicts(prepared_dir, kind, data.classes)}
    if root is not None and experiment is not None:
        report["mlflow_run_id"] = _log_to_mlflow(root, experiment, prepared_dir, result, report)
    write_json(Path(out_dir) / "report.json", report)
    if failures:
        lines = "\n".join(_line(f) for f in failures)
        hint = f"\n{contract.NEW_DATASET_HINT}" if broken else ""
        raise ValidationFailed(f"{len(failures)} expectation(s) failed; Data Docs: {docs}\n{lines}{hint}")
    # the last accepted version, and the contract (frozen: kept from the first accepted version)
    write_json(reference_path, {**_reference(prepared_dir, kind, data.classes), "contract": found})
    log.info("all splits passed validation; Data Docs: %s", docs)
    return result


def _leakage(prepared_dir: Path, kind: str, max_fraction: float) -> list[Failure]:
    """Val and test examples identical to training examples, beyond `max_fraction` of the split: named by row."""
    train = leakage.example_hashes(prepared_dir / "train", kind)
    failures = []
    for split in ("val", "test"):
        held_out = leakage.example_hashes(prepared_dir / split, kind)
        pairs = leakage.leaked(train, held_out)
        if len(pairs) > max_fraction * len(held_out):
            failures.append(Failure(split, "no_leakage_from_train", "rows", leakage.describe(split, pairs, len(held_out)),
                                    f"max_leaked_fraction={max_fraction:g}"))
    return failures


def _conflicts(prepared_dir: Path, kind: str, names: list[str]) -> dict:
    """Identical examples with different labels in this version (reported, and logged, not refused)."""
    hashes = [h for s in SPLITS for h in leakage.example_hashes(prepared_dir / s, kind)]
    labels = np.concatenate([load_split(prepared_dir / s, mmap=True).y for s in SPLITS])
    found = leakage.conflicting_labels(hashes, labels, names)
    if found["examples"]:
        log.warning("%d example(s) appear more than once with different labels (e.g. %s): a model can learn only one "
                    "of them; each is kept in one split", found["examples"], found["labels_of_first"][0])
    return found


def _reference(prepared_dir: Path, kind: str, names: list[str]) -> dict:
    """What later versions are compared with, over all splits of this one: statistics, label shares, the schema."""
    from tasks.common.tables import LABEL, feature_kinds

    splits = [load_split(prepared_dir / s) for s in SPLITS]
    y = np.concatenate([s.y for s in splits])
    labels, counts = np.unique(y, return_counts=True)
    classes = {names[k]: float(c / counts.sum()) for k, c in zip(labels.tolist(), counts)}
    if kind == "images":
        rows = suites.image_stats(np.concatenate([s.x for s in splits]), y)
        return {"kind": kind, "image_shape": rows["image_shape"].iloc[0], "classes": classes,
                "columns": {c: {"mean": float(rows[c].mean()), "std": float(rows[c].std())} for c in suites.DRIFT_COLUMNS}}
    rows = pd.concat([pd.read_parquet(prepared_dir / s / "rows.parquet") for s in SPLITS], ignore_index=True)
    numeric, categorical = feature_kinds(rows)
    return {
        "kind": kind, "classes": classes, "label": LABEL,
        "numeric": {c: {"mean": float(rows[c].mean()), "std": float(rows[c].std()), "min": float(rows[c].min()),
                        "max": float(rows[c].max())} for c in numeric},
        "categories": {c: sorted(str(v) for v in rows[c].dropna().unique()) for c in categorical},
    }


def _tables(split_name: str, split_dir: Path, kind: str, params: ValidateParams, reference: dict | None,
            classes: list[str]):
    """The two tables checked per split: one row per example, one row per class."""
    split = load_split(split_dir)
    if kind == "images":
        yield f"{split_name}_rows", *suites.image_checks(suites.image_stats(split.x, split.y), params, reference, classes)
    else:
        yield f"{split_name}_rows", *suites.table_checks(suites.table_rows(split_dir), params, reference, classes)
    yield f"{split_name}_class_counts", *suites.class_checks(split.y, params, reference, classes)


def _log_to_mlflow(root: Path, experiment: str, prepared_dir: Path, result: ValidateResult, report: dict) -> str:
    """A run of its own for this validation: the outcome, each failure, and the Data Docs site as artifacts."""
    import mlflow

    from tasks.common import tracking
    from tasks.common.dataset import directory_md5

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
            # per-class tables name the classes behind each unexpected value
            result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["class"]}
            if "class" in frame.columns else {"result_format": "SUMMARY"},
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
                        observed=_missing(frame, cfg) or _observed(res.result),
                        limit=_limit(cfg.kwargs),
                    )
                )
    return failures


def _line(failure: Failure) -> str:
    if failure.split == "contract":
        return f"  - data contract, {failure.column}: {failure.observed}"
    return (f"  - {failure.split}: {failure.expectation}({failure.column or ''}) observed {failure.observed}; "
            f"limit: {failure.limit}")


def _limit(kwargs: dict) -> str:
    """An expectation's demand in words: its bounds or set, as configured."""
    shown = {k: v for k, v in kwargs.items() if k not in ("column", "batch_id", "result_format", "catch_exceptions")
             and v is not None}
    parts = []
    for key, value in shown.items():
        if isinstance(value, (list, tuple)) and len(value) > 12:
            value = f"[{', '.join(map(str, value[:12]))}, … ({len(value)} in all)]"
        elif isinstance(value, float):
            value = f"{value:.6g}"
        parts.append(f"{key}={value}")
    return ", ".join(parts)


def _missing(frame, cfg) -> str:
    """For a set a column's distinct values must contain: which members are missing (GX reports no observed value
    for it with the per-class result format)."""
    column, wanted = cfg.kwargs.get("column"), cfg.kwargs.get("value_set")
    if "distinct_values_to" not in cfg.type or column not in frame.columns or not isinstance(wanted, (list, tuple)):
        return ""
    present = set(frame[column].tolist())
    missing = [v for v in wanted if v not in present]
    return f"missing {missing}" if missing else ""


def _observed(result: dict) -> str:
    if "observed_value" in result:
        return str(result["observed_value"])
    if result.get("unexpected_index_list") and isinstance(result["unexpected_index_list"][0], dict):
        named = [f"class {row.get('class')!r}: {value}" for row, value in
                 zip(result["unexpected_index_list"], result.get("unexpected_list", []))][:10]
        return f"{result.get('unexpected_count')} unexpected value(s): {', '.join(named)}"
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


def run(params: Params, layout: Layout) -> ValidateResult:
    """The stage as dvc.yaml runs it (`python -m tasks.validate`): params.yaml's values, the project's paths."""
    return validate(params.validate_, layout.prepared, layout.validation, root=layout.root,
                    experiment=params.base.experiment)
