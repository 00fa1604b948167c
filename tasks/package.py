"""Stage `package`: the chosen model into the BentoML model store, with its lineage, and a Bento built from bento/.

The shipped variant is also registered in MLflow (`<registered_model>-compressed`), linked both ways to the
fp32 version it came from and tagged with its measured row of the compression table."""

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
BENTO_SOURCES = ("bento/service.py", "tasks/__init__.py", "tasks/imaging.py", "tasks/rows.py", "tasks/skew.py")


@dataclass(frozen=True)
class PackageResult:
    model_tag: str
    bento_tag: str


def package(params: Params, root: Path, compress_dir: Path, evaluate_dir: Path, train_dir: Path,
            bento_dir: Path, out_dir: Path, prepared_dir: Path | None = None) -> PackageResult:
    """Save `compress_dir/model.onnx` as a BentoML model and build the Bento that serves it."""
    import mlflow

    from tasks import registry, tracking

    choice = json.loads((compress_dir / "choice.json").read_text())
    metrics = json.loads((evaluate_dir / "metrics.json").read_text())
    version = json.loads((evaluate_dir / "gate.json").read_text())["version"]
    run_id = json.loads((train_dir / "run.json").read_text())["run_id"]
    with tracking.resumed_run(root, params.base.experiment, train_dir / "run.json") as run:
        lineage = {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")}
        metadata = {
            "mlflow_run_id": run_id,
            "registered_model": params.evaluate.registered_model,
            "model_version": version,
            "variant": choice["variant"],
            "pixel_max": choice["pixel_max"],
            "kind": choice.get("kind", "images"),
            "input_shape": choice["input_shape"],
            "n_classes": choice["n_classes"],
            "metrics": metrics,
            "lineage": lineage,
            "params": params.as_dict(),
        }
        prepared_dir = prepared_dir or root / "data/prepared"
        if metadata["kind"] == "table":  # the Bento's /predict_rows encodes raw rows with it (tasks/rows.py)
            metadata["encoding"] = json.loads((prepared_dir / "meta.json").read_text())["encoding"]
        metadata["expectations"] = _training_expectations(prepared_dir, choice, lineage)
        labels = {"variant": choice["variant"], "model_version": version}
        table = [{"variant": k, **v} for k, v in json.loads((compress_dir / "variants.json").read_text()).items()]
        compressed = registry.register_compressed(params.evaluate.registered_model, version, compress_dir / "model.onnx",
                                                  table, choice["variant"], run)
        metadata["compressed_model"] = {"name": registry.compressed_name(params.evaluate.registered_model),
                                        "version": compressed}
        result = build_bento(compress_dir / "model.onnx", metadata, labels, params.package, bento_dir)
        mlflow.set_tags({"bento.model_tag": result.model_tag, "bento.tag": result.bento_tag,
                         "compressed.version": compressed})
    write_json(out_dir / "bento.json", {"model_tag": result.model_tag, "bento_tag": result.bento_tag})
    log.info("packaged %s into Bento %s", result.model_tag, result.bento_tag)
    return result


def _training_expectations(prepared_dir: Path, choice: dict, lineage: dict) -> dict:
    """The training split's input statistics, in the units the service receives (tasks/skew.py)."""
    from tasks.dataset import load_split, served_inputs
    from tasks.skew import expectations

    train = load_split(prepared_dir / "train", mmap=True)
    version = lineage.get("dvc.data/prepared") or lineage.get("data.train.md5", "unknown")
    return expectations(served_inputs(train.x, choice["pixel_max"]), choice.get("kind", "images"), version)


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
