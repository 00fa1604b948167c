"""Stage `package`: the chosen model into the BentoML model store, with its lineage, and a Bento built from bento/."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tasks.atomic import write_json
from tasks.config import PackageParams, Params

log = logging.getLogger(__name__)

# What the Bento ships besides its model (paths from the project root; bento/bentofile.yaml includes them).
BENTO_SOURCES = ("bento/service.py", "tasks/__init__.py", "tasks/imaging.py", "tasks/rows.py")


@dataclass(frozen=True)
class PackageResult:
    model_tag: str
    bento_tag: str


def package(params: Params, root: Path, compress_dir: Path, evaluate_dir: Path, train_dir: Path,
            bento_dir: Path, out_dir: Path, prepared_dir: Path | None = None) -> PackageResult:
    """Save `compress_dir/model.onnx` as a BentoML model and build the Bento that serves it."""
    import mlflow

    from tasks import tracking

    choice = json.loads((compress_dir / "choice.json").read_text())
    metrics = json.loads((evaluate_dir / "metrics.json").read_text())
    promotion = json.loads((evaluate_dir / "promotion.json").read_text())
    run_id = json.loads((train_dir / "run.json").read_text())["run_id"]
    with tracking.resumed_run(root, params.base.experiment, train_dir / "run.json") as run:
        lineage = {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")}
        metadata = {
            "mlflow_run_id": run_id,
            "registered_model": params.evaluate.registered_model,
            "model_version": promotion["version"],
            "variant": choice["variant"],
            "pixel_max": choice["pixel_max"],
            "kind": choice.get("kind", "images"),
            "input_shape": choice["input_shape"],
            "n_classes": choice["n_classes"],
            "metrics": metrics,
            "lineage": lineage,
            "params": params.as_dict(),
        }
        if metadata["kind"] == "table":  # the Bento's /predict_rows encodes raw rows with it (tasks/rows.py)
            metadata["encoding"] = json.loads(((prepared_dir or root / "data/prepared") / "meta.json").read_text())["encoding"]
        labels = {"variant": choice["variant"], "model_version": str(promotion["version"])}
        result = build_bento(compress_dir / "model.onnx", metadata, labels, params.package, bento_dir)
        mlflow.set_tags({"bento.model_tag": result.model_tag, "bento.tag": result.bento_tag})
    write_json(out_dir / "bento.json", {"model_tag": result.model_tag, "bento_tag": result.bento_tag})
    log.info("packaged %s into Bento %s", result.model_tag, result.bento_tag)
    return result


def build_bento(onnx_path: Path, metadata: dict, labels: dict, cfg: PackageParams, bento_dir: Path) -> PackageResult:
    """Store `onnx_path` as a BentoML model with `metadata` (input_shape, pixel_max, kind, ...) and build the
    Bento of bento/ around it."""
    import bentoml

    with bentoml.models.create(name=cfg.bento_model, labels=labels, metadata=metadata) as model:
        shutil.copyfile(onnx_path, Path(model.path) / "model.onnx")
    with tempfile.TemporaryDirectory() as context:
        # The build context holds only what the Bento ships: BentoML walks all of it, and the project root
        # (a virtualenv, data, MLflow's store) takes it seconds.
        for rel in BENTO_SOURCES:
            (Path(context) / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(bento_dir.parent / rel, Path(context) / rel)
        bento = bentoml.bentos.build_bentofile(
            str(bento_dir / "bentofile.yaml"), build_ctx=context, labels=labels,
            args={"model_tag": str(model.tag), **cfg.build_args()},
        )
    return PackageResult(str(model.tag), str(bento.tag))
