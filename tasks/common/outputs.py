"""The small JSON files one step hands to the next, each typed once here: one writer, one reader, no string keys.

Each is a frozen pydantic model written atomically (`write`) and read back validated (`read`), so a field
renamed by its writer fails loudly in its reader instead of reading as missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from tasks.common.atomic import write_with

OUTCOME_ENV = "PIPELINE_OUTCOME_FILE"  # where a stage's command line writes its StageOutcome, when set

T = TypeVar("T", bound="Output")


class Output(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_with(path, lambda tmp: tmp.write_text(self.model_dump_json(indent=2) + "\n"))

    @classmethod
    def read(cls: type[T], path: Path) -> T:
        return cls.model_validate_json(path.read_text())


class StageOutcome(Output):
    """What one stage command did: its figures, or the error that stopped it and whether a retry can help."""

    stage: str
    ok: bool
    result: dict[str, Any] = {}
    error: str = ""  # the PipelineError's class name
    message: str = ""
    retryable: bool = False
    seconds: float = 0.0  # in the stage's own `run` (no interpreter start, no DVC), as the flow reports it


class DataDescription(Output):
    """data/raw/meta.json, then data/prepared/meta.json: what ingest found in the data (ingest → prepare → every later
    stage and the served model). `classes` is the vocabulary: the model's output i is the class `classes[i]`."""

    kind: str  # images | table
    source: str  # the source kind ingest read: digits | arrays | idx | images | table | texts
    classes: list[str]
    problem: str  # binary | multiclass
    problem_reason: str
    pixel_max: float = 1.0  # images: the intensity of full white in the data's own scale (8-bit: 255)
    pixel_max_reason: str = ""
    image_shape: list[int] = []  # images: H, W as stored
    channels: int = 1  # images: 1 grayscale, 3 RGB
    channels_reason: str = ""  # the colour policy: how the channel count was chosen
    columns: dict[str, str] = {}  # tables: each feature column's kind, numeric | categorical | text
    features: int = 0  # tables, after prepare: the encoded feature count
    encoding: dict[str, Any] = {}  # tables, after prepare: the fitted transform (tasks/common/tables.py describe)

    @property
    def served_shape(self) -> list[int]:
        """One example as the service takes it: H×W (grayscale), H×W×C (colour) or F (an encoded table row)."""
        if self.kind == "table":
            return [self.features]
        return [*self.image_shape, self.channels] if self.channels > 1 else list(self.image_shape)


class TrainRun(Output):
    """artifacts/train/run.json: the MLflow run `train` opened; later stages log into the same run."""

    run_id: str
    experiment_id: str


class GateDecision(Output):
    """The paired gate's decision on one registered version (tasks/evaluate/gate.py)."""

    version: str
    passed: bool  # the gate let it through: the promote stage may make it champion
    reason: str
    previous_champion: str | None
    champion_accuracy: float | None = None  # on this run's test split
    improvement: float | None = None
    test: str | None = None
    statistic: float | None = None
    p_value: float | None = None
    lower_bound: float | None = None  # of the accuracy gain, one-sided at confidence 1 - significance
    class_regressions: dict[str, float] = {}
    metric: str = "accuracy"  # what the gate compared (evaluate.gate_metric)
    champion_score: float | None = None  # the champion's `metric` on this run's test split


class GateResult(GateDecision):
    """artifacts/evaluate/gate.json: the decision and the test split it was made on (evaluate → package, promote,
    the run report)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, serialize_by_alias=True)

    test_split_md5: str = Field(alias="test_split.md5")  # what both models were scored on
    test_split_dvc_md5: str = Field(alias="test_split.dvc_md5")


class CompressChoice(Output):
    """artifacts/compress/choice.json: the shipped variant and what a server needs to feed it (compress → package,
    promote)."""

    variant: str
    reason: str
    pixel_max: float
    kind: str  # images | table
    input_shape: list[int]  # one example as the network takes it: C, H, W or F
    served_shape: list[int]  # one example as the ONNX model (and the service) takes it: H, W[, C] or F
    classes: list[str]  # the class of each output, in order


class BentoBuild(Output):
    """artifacts/package/bento.json: the BentoML model and the Bento built around it (package → promote, roll-out)."""

    model_tag: str
    bento_tag: str


class Promotion(Output):
    """artifacts/promote/promotion.json: whether the version became champion, and why (promote → report, roll-out)."""

    version: str
    promoted: bool
    reason: str
    previous_champion: str | None
    readiness: dict[str, Any] | None = None  # what the serving check saw
    bento_tag: str
