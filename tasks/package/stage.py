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

from tasks.common.config import PackageParams, Params
from tasks.common.layout import Layout
from tasks.common.outputs import BentoBuild, CompressChoice, GateResult, TrainRun

log = logging.getLogger(__name__)

# What the Bento ships besides its model (paths from the project root; bento/bentofile.yaml includes them).


@dataclass(frozen=True)
class PackageResult:
    model_tag: str
    bento_tag: str


STORED_MODEL_ARTIFACT = "bentoml/stored_model.json"  # on the training run: the BentoML model's metadata and labels


def package(params: Params, root: Path, compress_dir: Path, evaluate_dir: Path, train_dir: Path,
            bento_dir: Path, out_dir: Path, prepared_dir: Path | None = None) -> PackageResult:
    """Save `compress_dir/model.onnx` as a BentoML model and build the Bento that serves it."""
    import mlflow

    from tasks.common import registry, tracking
    from tasks.common.dataset import prepared_meta

    choice = CompressChoice.read(compress_dir / "choice.json")
    metrics = json.loads((evaluate_dir / "metrics.json").read_text())
    version = GateResult.read(evaluate_dir / "gate.json").version
    run_id = TrainRun.read(train_dir / "run.json").run_id
    with tracking.resumed_run(root, params.base.experiment, train_dir / "run.json") as run:
        lineage = {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")}
        metadata = {
            "mlflow_run_id": run_id,
            "registered_model": params.evaluate.registered_model,
            "model_version": version,
            "variant": choice.variant,
            "pixel_max": choice.pixel_max,
            "kind": choice.kind,
            "input_shape": choice.input_shape,
            "served_shape": choice.served_shape,  # one example as /predict and /predict_npy take it
            "classes": choice.classes,  # output i is classes[i]: every endpoint answers these names
            "metrics": metrics,
            "lineage": lineage,
            "params": _without_nulls(params.recorded()),  # BentoML's metadata refuses None (an unset key reads as it)
        }
        prepared_dir = prepared_dir or root / "data/prepared"
        data = prepared_meta(prepared_dir)
        metadata["problem"] = data.problem
        if data.kind == "images":  # the colour policy, and /predict_image converts uploads to these channels
            metadata["channels"] = {"count": data.channels, "policy": data.channels_reason}
        if data.kind == "table":  # the Bento's /predict_rows encodes raw rows with it (tasks/shipped/rows.py)
            metadata["encoding"] = data.encoding
        metadata["expectations"] = _training_expectations(prepared_dir, choice, lineage)
        labels = {"variant": choice.variant, "model_version": version}
        table = [{"variant": k, **v} for k, v in json.loads((compress_dir / "variants.json").read_text()).items()]
        compressed = registry.register_compressed(params.evaluate.registered_model, version, compress_dir / "model.onnx",
                                                  table, choice.variant, run)
        metadata["compressed_model"] = {"name": registry.compressed_name(params.evaluate.registered_model),
                                        "version": compressed}
        # what the BentoML model is made of beside the ONNX file (registered above): another machine whose store
        # lacks it rebuilds it from these two (jobs/score/model.py)
        mlflow.log_dict({"metadata": metadata, "labels": labels}, STORED_MODEL_ARTIFACT)
        result = build_bento(compress_dir / "model.onnx", metadata, labels, params.package, bento_dir)
        mlflow.set_tags({"bento.model_tag": result.model_tag, "bento.tag": result.bento_tag,
                         "compressed.version": compressed})
    BentoBuild(model_tag=result.model_tag, bento_tag=result.bento_tag).write(out_dir / "bento.json")
    log.info("packaged %s into Bento %s", result.model_tag, result.bento_tag)
    return result


def _without_nulls(tree):
    if isinstance(tree, dict):
        return {key: _without_nulls(value) for key, value in tree.items() if value is not None}
    if isinstance(tree, list):
        return [_without_nulls(value) for value in tree]
    return tree


def _training_expectations(prepared_dir: Path, choice: CompressChoice, lineage: dict) -> dict:
    """The training split's input statistics, in the units the service receives (tasks/shipped/skew.py)."""
    from tasks.common.dataset import load_split, prepared_meta, served_inputs
    from tasks.shipped.skew import expectations
    from tasks.shipped.text import text_layout

    train = load_split(prepared_dir / "train", mmap=True)
    version = lineage.get("dvc.data/prepared") or lineage.get("data.train.md5", "unknown")
    meta = prepared_meta(prepared_dir)
    text = text_layout(meta.encoding, meta.features) if meta.kind == "table" else None
    return expectations(served_inputs(train.x, choice.pixel_max), choice.kind, version, text)


def build_bento(onnx_path: Path, metadata: dict, labels: dict, cfg: PackageParams, bento_dir: Path) -> PackageResult:
    """Store `onnx_path` as a BentoML model with `metadata` (input_shape, pixel_max, kind, ...) and build the
    Bento of bento/ around it."""
    import bentoml

    with bentoml.models.create(name=cfg.bento_model, labels=labels, metadata=metadata) as model:
        shutil.copyfile(onnx_path, Path(model.path) / "model.onnx")
    return PackageResult(str(model.tag), build_around(str(model.tag), labels, cfg, bento_dir))


def build_around(model_tag: str, labels: dict, cfg: PackageParams, bento_dir: Path) -> str:
    """Build the Bento of bento/ around the stored BentoML model `model_tag`; its tag."""
    import bentoml

    with tempfile.TemporaryDirectory() as context:
        # The build context holds only what the Bento ships: BentoML walks all of it, and the project root
        # (a virtualenv, data, MLflow's store) takes it seconds.
        for rel in shipped_files(bento_dir):
            (Path(context) / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(bento_dir.parent / rel, Path(context) / rel)
        bento = bentoml.bentos.build_bentofile(
            str(bento_dir / "bentofile.yaml"), build_ctx=context, labels=labels,
            args={"model_tag": model_tag, **cfg.build_args()},
        )
    return str(bento.tag)


def shipped_files(bento_dir: Path) -> list[str]:
    """The project files the Bento ships, from bentofile.yaml's `include` (anchored paths; a folder means its
    Python files): one list for the build context and for BentoML."""
    import yaml

    root = bento_dir.parent
    files = []
    for pattern in yaml.safe_load((bento_dir / "bentofile.yaml").read_text())["include"]:
        rel = pattern.strip("/")
        files += ([str(p.relative_to(root)) for p in sorted((root / rel).glob("*.py"))] if pattern.endswith("/")
                  else [rel])
    return files


def run(params: Params, layout: Layout) -> PackageResult:
    """The stage as dvc.yaml runs it (`python -m tasks.package`): params.yaml's values, the project's paths."""
    return package(params, layout.root, layout.compress, layout.evaluate, layout.train, layout.bento_dir,
                   layout.package, layout.prepared)
