"""Stage `package`: the chosen model into the BentoML model store, with its lineage, and a Bento built from bento/."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from tasks.atomic import write_json
from tasks.config import Params

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackageResult:
    model_tag: str
    bento_tag: str


def package(params: Params, root: Path, compress_dir: Path, evaluate_dir: Path, train_dir: Path,
            bento_dir: Path, out_dir: Path) -> PackageResult:
    """Save `compress_dir/model.onnx` as a BentoML model and build the Bento that serves it."""
    import bentoml
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
        labels = {"variant": choice["variant"], "model_version": str(promotion["version"])}
        with bentoml.models.create(name=params.package.bento_model, labels=labels, metadata=metadata) as model:
            shutil.copyfile(compress_dir / "model.onnx", Path(model.path) / "model.onnx")
        model_tag = str(model.tag)
        bento = bentoml.bentos.build_bentofile(
            str(bento_dir / "bentofile.yaml"), build_ctx=str(bento_dir), labels=labels,
            args={"model_tag": model_tag, "max_batch_size": params.package.max_batch_size,
                  "max_latency_ms": params.package.max_latency_ms},
        )
        mlflow.set_tags({"bento.model_tag": model_tag, "bento.tag": str(bento.tag)})
    write_json(out_dir / "bento.json", {"model_tag": model_tag, "bento_tag": str(bento.tag)})
    log.info("packaged %s into Bento %s", model_tag, bento.tag)
    return PackageResult(model_tag, str(bento.tag))
