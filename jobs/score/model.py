"""The model a batch is scored with: the ONNX file and metadata stored in the BentoML model store by `package`, the
same file the champion's Bento serves (no copy, no second export)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from tasks.common.errors import PipelineError


log = logging.getLogger(__name__)


class NoModel(PipelineError):
    """No shipped model to score with; the message says what to run."""


@dataclass(frozen=True)
class ShippedModel:
    onnx_path: Path
    meta: dict  # the BentoML model's metadata (package): classes, served_shape, kind, pixel_max, encoding, ...
    tag: str  # the BentoML model tag

    @property
    def kind(self) -> str:
        return self.meta.get("kind", "images")

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.meta["classes"]]

    @property
    def served_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.meta["served_shape"])

    @property
    def channels(self) -> int:
        return self.served_shape[2] if self.kind == "images" and len(self.served_shape) == 3 else 1

    @property
    def name(self) -> str:
        return str(self.meta.get("registered_model", ""))

    @property
    def version(self) -> str:
        return str(self.meta.get("model_version", ""))

    @property
    def variant(self) -> str:
        return str(self.meta.get("variant", ""))


def _normalised(meta: dict) -> dict:
    """Metadata of a model stored before the class names and served shape were recorded (the digits' first
    releases): their equivalents, from `n_classes` and the N×C×H×W `input_shape`."""
    meta = dict(meta)
    if "classes" not in meta and "n_classes" in meta:
        meta["classes"] = [str(k) for k in range(int(meta["n_classes"]))]
    if "served_shape" not in meta and "input_shape" in meta:
        shape = [int(d) for d in meta["input_shape"]]
        meta["served_shape"] = shape if meta.get("kind") == "table" else (
            shape[1:] if shape[0] == 1 else [*shape[1:], shape[0]])
    return meta


def import_libraries() -> None:
    """Import what finding, running and tracking the shipped model takes (MLflow and its SQL stores, BentoML's model
    store, ONNX Runtime, PyArrow, DVC): seconds a command spends while its Prefect server boots instead of after."""
    import importlib

    for name in ("mlflow", "mlflow.store.tracking.sqlalchemy_store", "mlflow.store.model_registry.sqlalchemy_store",
                 "bentoml", "bentoml.models", "onnxruntime", "pyarrow.parquet", "PIL.Image", "dvc.repo"):
        importlib.import_module(name)


def stored_model(tag: str) -> ShippedModel:
    """The BentoML model `tag` (name:version, or name for the newest)."""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        model = bentoml.models.get(tag)
    except NotFound as err:
        raise NoModel(f"no BentoML model {tag!r} in this machine's store (BENTOML_HOME)") from err
    return ShippedModel(Path(model.path_of("model.onnx")), _normalised(model.info.metadata), str(model.tag))


def champion_model(root: Path, params) -> ShippedModel:
    """The newest BentoML model stored for the registry's current `champion` version; on a machine whose store lacks
    it (a new worker, another BENTOML_HOME, a cleaned store), imported first from the registry: the champion's
    compressed ONNX version and the stored model's metadata logged on its run (the package stage)."""
    import bentoml

    from tasks.common import registry, tracking
    from tasks.common.errors import PromotionError

    tracking.use_store(root)
    name = params.evaluate.registered_model
    champion = registry.champion_version(name)
    if champion is None:
        raise NoModel(f"{name} has no champion yet: run the pipeline (mlops run), or name a model (--model NAME:VERSION)")
    from bentoml.exceptions import NotFound

    try:
        stored = bentoml.models.list(params.package.bento_model)
    except NotFound:  # none of that name in this store at all
        stored = []
    try:
        newest = registry.newest_for_champion(name, stored, "BentoML model")
    except PromotionError:
        return imported(name, champion, params.package.bento_model)
    return ShippedModel(Path(newest.path_of("model.onnx")), _normalised(newest.info.metadata), str(newest.tag))


def imported(name: str, champion: str, bento_model: str) -> ShippedModel:
    """The champion's shipped model rebuilt in this machine's BentoML store from what the registry holds (its
    labels are the package stage's, so a Bento built around it is labelled like one `package` built)."""
    import json
    import os
    import tempfile

    import bentoml
    import mlflow
    from mlflow.exceptions import MlflowException

    from tasks.common.registry import compressed_name
    from tasks.package.stage import STORED_MODEL_ARTIFACT

    client = mlflow.MlflowClient()
    version = client.get_model_version(name, champion)
    compressed = version.tags.get("compressed.version")
    missing = (f"champion {name} v{champion} has no shipped model in this machine's BentoML store "
               f"({os.environ.get('BENTOML_HOME', '~/bentoml')}) and the registry cannot rebuild it")
    if not compressed:
        raise NoModel(f"{missing}: the version has no compressed model registered (its run never packaged it); run "
                      "the pipeline (mlops run) where the data is, or name a model (--model NAME:VERSION)")
    with tempfile.TemporaryDirectory(prefix="champion-") as tmp:
        try:
            stored = json.loads(Path(mlflow.artifacts.download_artifacts(
                run_id=version.run_id, artifact_path=STORED_MODEL_ARTIFACT, dst_path=tmp)).read_text())
            folder = Path(mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{compressed_name(name)}/{compressed}", dst_path=f"{tmp}/model"))
        except (MlflowException, OSError) as err:
            raise NoModel(f"{missing}: {str(err).splitlines()[0]}; run the pipeline (mlops run) on a machine with "
                          "the data, or name a model (--model NAME:VERSION)") from err
        import onnx

        shipped = onnx.load(str(folder / "model.onnx"))  # MLflow stores the weights beside it (external data)
        with bentoml.models.create(name=bento_model, labels=stored["labels"], metadata=stored["metadata"]) as model:
            onnx.save_model(shipped, str(Path(model.path) / "model.onnx"), save_as_external_data=False)  # one file,
            # as package stores it: the scorer hands its bytes to ONNX Runtime
    log.warning("champion %s v%s was not in this machine's BentoML store: imported from the registry (%s v%s) as %s",
                name, champion, compressed_name(name), compressed, model.tag)
    return stored_model(str(model.tag))  # as saved in the store (the block above built it in a temporary folder)

