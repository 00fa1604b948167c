"""A batch-scoring run in MLflow: the input logged as a dataset (its digest), the counts, the drift and the class
shares as metrics, the model and output as tags, the summary and the quarantine as artifacts. One experiment per
dataset name: `<base.experiment>-scoring`."""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path


def log_run(root: Path, experiment: str, result) -> str:
    """The run's id."""
    import mlflow
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.dataset_source_registry import resolve_dataset_source

    from tasks.common import tracking

    experiment_id = tracking.configure(root, f"{experiment}-scoring")
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"score {Path(result.input).name}") as run, \
            tracking.marked_open(root, run):
        with warnings.catch_warnings():  # "can be interpreted in multiple ways": both are the local-file source
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(str(Path(result.input).resolve()))
        mlflow.log_input(MetaDataset(source=source, name=Path(result.input).name, digest=result.input_digest[:36]),
                         context="scoring")
        mlflow.log_metrics({"rows": result.rows, "scored": result.scored, "quarantined": result.quarantined,
                            "bad_fraction": result.bad_fraction, "imputed_cells": result.imputed_cells,
                            **{f"share.{c}": share for c, share in result.class_shares.items()},
                            **({"drift.score": result.drift["score"]} if result.drift else {})})
        mlflow.set_tags({"stage": "score", "model.name": result.model["name"],
                         "model.version": result.model["version"], "model.variant": result.model["variant"],
                         "model.tag": result.model["tag"], "input.path": result.input,
                         "input.digest": result.input_digest, "output": result.output,
                         "drift.drifted": str(bool(result.drift.get("drifted"))).lower(), "engine": result.engine})
        with tempfile.TemporaryDirectory() as tmp:
            summary = Path(tmp) / "summary.json"
            summary.write_text(json.dumps({k: v for k, v in vars(result).items()}, indent=2, default=str))
            mlflow.log_artifact(str(summary))
        quarantine = Path(result.output) / "quarantine.parquet"
        if quarantine.is_file():
            mlflow.log_artifact(str(quarantine))
        return run.info.run_id
