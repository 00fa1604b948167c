"""The model a batch is scored with: the ONNX file and metadata stored in the BentoML model store by `package`, the
same file the champion's Bento serves (no copy, no second export)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tasks.common.errors import PipelineError


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
    """The newest BentoML model stored for the registry's current `champion` version."""
    import bentoml

    from tasks.common import registry, tracking
    from tasks.common.errors import PromotionError

    tracking.use_store(root)
    try:
        newest = registry.newest_for_champion(params.evaluate.registered_model,
                                              bentoml.models.list(params.package.bento_model), "BentoML model")
    except PromotionError as err:
        raise NoModel(f"{err} (--model NAME:VERSION)") from err
    return ShippedModel(Path(newest.path_of("model.onnx")), _normalised(newest.info.metadata), str(newest.tag))
