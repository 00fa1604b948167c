"""Stage `validate`: a Great Expectations suite over each split; a failure names every broken expectation."""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.common.atomic import write_json, write_with
from tasks.common.config import Params, ValidateParams
from tasks.common.dataset import SPLITS, load_split, prepared_meta
from tasks.common.errors import ValidationFailed
from tasks.common.layout import Layout
from tasks.validate import checkpoints, contract, leakage, offline_docs, report_page, suites
from tasks.validate.checkpoints import Check

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValidateResult:
    success: bool
    failures: list[Check] = field(default_factory=list)
    data_docs: Path | None = None  # Great Expectations' index: every validation of the project
    report: Path | None = None  # this version's report: what failed first, then every check
    checks: list[Check] = field(default_factory=list)


def validate(params: ValidateParams, prepared_dir: Path, out_dir: Path, *, root: Path | None = None,
             experiment: str | None = None) -> ValidateResult:
    """Check every split against the suite, write the report, Data Docs and `report.json`; raise if any check fails.

    With `root` and `experiment`, the outcome and the pages are also logged to MLflow as a run of their own (tagged
    `stage=validate`), pass or fail, before anything is raised.
    """
    import great_expectations as gx  # seconds to import: only here

    from tasks.common.tables import text_of

    started = time.time()
    data = prepared_meta(prepared_dir)
    kind = data.kind
    context = _context(gx, Path(out_dir))
    source = context.data_sources.add_or_update_pandas("prepared")
    reference_path = Path(out_dir) / "reference.json"
    reference = json.loads(reference_path.read_text()) if reference_path.is_file() else None
    if reference is not None and "contract" not in reference:
        log.info("the reference predates data contracts: drift is not checked, and this version sets the contract")
        reference = None
    found = contract.contract_of(data)
    checks, broken = _contract_checks(reference, found)
    if broken:  # another dataset: its drift against this one means nothing
        reference = None
    rendered = []
    for split_name in SPLITS:
        for asset_name, frame, suite in _tables(split_name, prepared_dir / split_name, kind, params, reference, data.classes):
            split_checks, pages = checkpoints.run(gx, context, source, asset_name, frame, suite, split_name)
            checks, rendered = checks + split_checks, rendered + pages
    everything = np.concatenate([load_split(prepared_dir / s, mmap=True).y for s in SPLITS])
    frame, suite = suites.version_class_checks(everything, params, data.classes)  # rows per class: over the version
    version_checks, pages = checkpoints.run(gx, context, source, "all_class_counts", frame, suite, "all splits")
    checks += version_checks
    checkpoints.build_docs(context, rendered + pages)
    text = text_of(data.columns) if kind == "table" else []
    checks += _leakage(prepared_dir, kind, params.max_leaked_fraction, text)
    failures = [c for c in checks if not c.passed]
    conflicts = _conflicts(prepared_dir, kind, data.classes, text)
    site = Path(out_dir) / "gx" / "uncommitted" / "data_docs" / "local_site"
    page = _pages(site, started, checks, broken, conflicts, prepared_dir, data)
    result = ValidateResult(success=not failures, failures=failures, data_docs=site / "index.html", report=page,
                            checks=checks)
    report = {**_report(result), "contract": found, "conflicting_labels": conflicts}
    if root is not None and experiment is not None:
        report["mlflow_run_id"] = _log_to_mlflow(root, experiment, prepared_dir, result, report)
    write_json(Path(out_dir) / "report.json", report)
    if failures:
        lines = "\n".join(f"  - {report_page.error_line(f)}" for f in failures)
        hint = f"\n{contract.NEW_DATASET_HINT}" if broken else ""
        raise ValidationFailed(f"{len(failures)} check(s) failed; report: {page}\n{lines}{hint}")
    # the last accepted version, and the contract (frozen: kept from the first accepted version)
    write_json(reference_path, {**_reference(prepared_dir, kind, data.classes), "contract": found})
    log.info("all splits passed validation; report: %s", page)
    return result


def _context(gx, out_dir: Path):
    """The project's file context: no progress bars, no analytics, no how-to buttons, our style sheet."""
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="file", project_root_dir=out_dir)
    context.variables.progress_bars = ProgressBarsConfig(globally=False)  # our own log lines say enough
    context.enable_analytics(False)
    site = context.list_data_docs_sites()["local_site"]
    if site.get("show_how_to_buttons", True):  # a first-visit walkthrough modal and tutorial buttons
        context.update_data_docs_site("local_site", {**site, "show_how_to_buttons": False})
    styles = Path(context.plugins_directory) / "custom_data_docs" / "styles" / "data_docs_custom_styles.css"
    write_with(styles, lambda tmp: shutil.copyfile(Path(__file__).parent / "data_docs.css", tmp))
    return context


def _contract_checks(reference: dict | None, found: dict) -> tuple[list[Check], list[str]]:
    """The frozen data contract as checks: one per difference, or one that passed (or set the contract)."""
    if reference is None:
        log.info("no reference data version yet: drift is not checked, and this version sets the data contract: %s",
                 json.dumps(found)[:500])
        return [Check("contract", "data_contract", None, "this version sets the contract", "", passed=True)], []
    broken = contract.differences(reference["contract"], found)
    if not broken:
        return [Check("contract", "data_contract", None, "matches", "the frozen contract", passed=True)], []
    return [Check("contract", "data_contract", p.split(":")[0], p.split(": ", 1)[1], "the frozen contract")
            for p in broken], broken


def _pages(site: Path, started: float, checks: list[Check], broken: list[str], conflicts: dict, prepared_dir: Path,
           data) -> Path:
    """The report page, GX's pages made self-contained, and GX's index pointing at the report."""
    notes = []
    if conflicts["examples"]:
        notes.append(f"{conflicts['examples']} example(s) appear more than once with different labels (e.g. "
                     f"{conflicts['labels_of_first'][0]}): a model can learn only one of them; each is kept in one "
                     "split")
    about = {"validated": report_page.now(), "kind": data.kind, "classes": len(data.classes),
             "rows": ", ".join(f"{s} {len(load_split(prepared_dir / s, mmap=True))}" for s in SPLITS),
             "prepared data": str(prepared_dir)}
    page = report_page.write(site / "report.html", checks, hint=contract.NEW_DATASET_HINT if broken else "",
                             notes=notes, about=about)
    report_page.link_from_index(site / "index.html", checks)
    left = offline_docs.make_offline(site, since=started)
    if left:  # a Great Expectations upgrade that names another CDN: vendor/README.md says what to add
        log.warning("Data Docs still load %d remote asset(s) (offline they will not render whole): %s", len(left),
                    "; ".join(left[:3]))
    return page


def _leakage(prepared_dir: Path, kind: str, max_fraction: float, text: list[str]) -> list[Check]:
    """Val and test examples identical to training examples, beyond `max_fraction` of the split: named by row."""
    train = leakage.example_hashes(prepared_dir / "train", kind, text)
    checks = []
    for split in ("val", "test"):
        held_out = leakage.example_hashes(prepared_dir / split, kind, text)
        pairs = leakage.leaked(train, held_out)
        checks.append(Check(split, "no_leakage_from_train", "rows", leakage.describe(split, pairs, len(held_out)),
                            f"max_leaked_fraction={max_fraction:g}", passed=len(pairs) <= max_fraction * len(held_out)))
    return checks


def _conflicts(prepared_dir: Path, kind: str, names: list[str], text: list[str]) -> dict:
    """Identical examples with different labels in this version (reported, and logged, not refused)."""
    hashes = [h for s in SPLITS for h in leakage.example_hashes(prepared_dir / s, kind, text)]
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
    encoding = prepared_meta(prepared_dir).encoding
    rows = pd.concat([suites.table_rows(prepared_dir / s, encoding) for s in SPLITS], ignore_index=True)
    text = suites.text_reference(rows, encoding)
    numeric, categorical = feature_kinds(pd.read_parquet(prepared_dir / "train" / "rows.parquet"), list(text))
    return {
        "kind": kind, "classes": classes, "label": LABEL,
        "numeric": {c: {"mean": float(rows[c].mean()), "std": float(rows[c].std()), "min": float(rows[c].min()),
                        "max": float(rows[c].max())} for c in numeric},
        "categories": {c: sorted(str(v) for v in rows[c].dropna().unique()) for c in categorical},
        "text": text,
    }


def _tables(split_name: str, split_dir: Path, kind: str, params: ValidateParams, reference: dict | None,
            classes: list[str]):
    """The two tables checked per split: one row per example, one row per class."""
    split = load_split(split_dir)
    if kind == "images":
        yield f"{split_name}_rows", *suites.image_checks(suites.image_stats(split.x, split.y), params, reference, classes)
    else:
        encoding = prepared_meta(split_dir.parent).encoding
        yield f"{split_name}_rows", *suites.table_checks(suites.table_rows(split_dir, encoding), params, reference,
                                                         classes, encoding)
    yield f"{split_name}_class_counts", *suites.class_checks(split.y, params, reference, classes)


def _log_to_mlflow(root: Path, experiment: str, prepared_dir: Path, result: ValidateResult, report: dict) -> str:
    """A run of its own for this validation: the outcome, each failure, and the Data Docs site as artifacts."""
    import mlflow

    from tasks.common import tracking
    from tasks.common.dataset import directory_md5

    experiment_id = tracking.configure(root, experiment)
    data_md5 = {s: directory_md5(prepared_dir / s) for s in SPLITS}
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"validate {data_md5['train'][:8]}") as run, \
            tracking.marked_open(root, run):
        mlflow.set_tags({"stage": "validate", "validation.success": str(result.success).lower(),
                         **{f"data.{s}.md5": h for s, h in data_md5.items()}})
        mlflow.log_metric("failed_expectations", len(result.failures))
        mlflow.log_dict(report, "validation/report.json")
        if result.data_docs is not None and result.data_docs.is_file():
            mlflow.log_artifacts(str(result.data_docs.parent), artifact_path="data_docs")
        if not result.success:
            mlflow.end_run(status="FAILED")
        return run.info.run_id


def _report(result: ValidateResult) -> dict:
    return {
        "success": result.success,
        "failures": [vars(f) for f in result.failures],
        "checks": [vars(c) for c in result.checks],
        "report": str(result.report) if result.report else None,
        "data_docs": str(result.data_docs) if result.data_docs else None,
    }


def run(params: Params, layout: Layout) -> ValidateResult:
    """The stage as dvc.yaml runs it (`python -m tasks.validate`): params.yaml's values, the project's paths."""
    return validate(params.validate_, layout.prepared, layout.validation, root=layout.root,
                    experiment=params.base.experiment)
