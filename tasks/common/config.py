"""params.yaml, typed once: one frozen model per section, loaded and validated here only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from tasks.common.errors import ConfigError


def class_name(value) -> str:
    """A label as its class name, the one spelling ingest and params.yaml share: integral numbers without a
    trailing '.0' (1, 1.0 and np.int64(1) are "1"), booleans "True"/"False", text stripped."""
    import numpy as np

    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()


ClassName = Annotated[str, BeforeValidator(class_name)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaseParams(Section):
    seed: int = 42
    name: str = Field("", pattern=r"^$|^[a-z0-9][a-z0-9-]*$")  # the dataset's name; empty: from ingest.path ("digits" without one)
    experiment: str = ""  # the MLflow experiment; empty: <name>-pipeline


class IngestParams(Section):
    source: Literal["auto", "digits", "arrays", "idx", "images", "table", "texts"] = "auto"  # auto: told from `path`
    path: str = ""  # a file or folder (see data/sources/README.md); empty: the bundled digits
    image_size: tuple[int, int] | tuple[()] = ()  # image folders: (H, W) every image is resized to; empty: the most common size
    max_image_side: int = Field(64, ge=1)  # image folders with image_size empty: the longer side is scaled down to this
    channels: Literal["auto", 1, 3] = "auto"  # image folders: 1 grayscale, 3 RGB; auto: 3 if any image holds colour
    label_column: str = ""  # tables: the column holding the class; empty: the first named label, target, class, y, ...
    max_table_mb: float = Field(1024, gt=0)  # tables: the most a table may take in memory, judged before reading it
    text_columns: list[str] = []  # tables: the free-text columns; empty: inferred (mostly distinct, several words)
    text_min_distinct: float = Field(0.5, ge=0, le=1)  # inferred text: at least this share of its values distinct
    text_min_words: float = Field(3.0, ge=0)  # ... and at least this many words per value on average
    text_fallback_encoding: str = ""  # text files and tables that are not UTF-8 are read as this (e.g. cp1252);
                                      # empty: refused, naming the file and the first bad byte

    @model_validator(mode="after")
    def _sources_need_a_path(self) -> IngestParams:
        if self.source not in ("auto", "digits") and not self.path:
            raise ValueError(f"source '{self.source}' needs ingest.path (a file or folder, e.g. under data/sources)")
        return self


class PrepareParams(Section):
    val_fraction: float = Field(0.15, gt=0, lt=1)
    test_fraction: float = Field(0.2, gt=0, lt=1)
    pixel_max: float | Literal["auto"] = "auto"  # raw intensities are divided by this; auto: ingest's reading of the data
    vocab_size: int = Field(8000, ge=16, le=2**20)  # text: the tokenizer's vocabulary, learnt from the train split
    max_tokens: int = Field(128, ge=1, le=4096)  # text: tokens read per text at most (the longest training text's, in
    # steps of 8, up to this; the rest are cut: validate counts how many)

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> PrepareParams:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("val_fraction + test_fraction must leave at least 10 % for training")
        return self


class ValidateParams(Section):
    min_rows_per_class: int = Field(20, ge=1)
    max_class_imbalance: float = Field(10.0, ge=1)  # largest class / smallest class, in rows: a minority of 10 % passes
    max_duplicate_fraction: float = Field(0.1, ge=0, le=1)  # share of a split's examples that repeat another one
    max_leaked_fraction: float = Field(0.0, ge=0, le=1)  # share of val/test examples identical to a training example
    drift_max_shift: float = Field(0.25, gt=0)  # a statistic's mean may move this many reference std devs
    max_label_shift: float = Field(0.05, gt=0, le=1)  # a class's share of rows may move this much from the reference
    max_null_fraction: float = Field(0.3, ge=0, le=1)  # tables: share of missing values allowed per column
    table_range_margin: float = Field(0.1, ge=0)  # tables: values may pass the reference's min–max by this share of it
    max_new_category_fraction: float = Field(0.01, ge=0, le=1)  # tables: share of values in categories never seen before
    max_empty_text_fraction: float = Field(0.1, ge=0, le=1)  # text: share of empty (or missing) texts per split
    max_truncated_fraction: float = Field(1.0, ge=0, le=1)  # text: share of texts longer than prepare.max_tokens
    max_unknown_token_rate: float = Field(0.1, ge=0, le=1)  # text: mean share of a text's tokens the vocabulary lacks
    image_shape: tuple[int, ...] = ()  # images: the expected (H, W); empty: the last accepted version's shape
    labels: tuple[ClassName, ...] = ()  # the class names every version must have; empty: whatever classes the data holds
    value_min: float = 0.0
    value_max: float = 1.0


class AugmentParams(Section):
    """Random affine per training image, on the device; all zero turns it off."""

    rotation: float = Field(10.0, ge=0, le=180)  # degrees, either way
    scale: float = Field(0.1, ge=0, lt=1)  # zoom by up to ±this
    shift: float = Field(0.1, ge=0, lt=0.5)  # move by up to ±this share of the image side


class TrainParams(Section):
    model: Literal["auto", "cnn", "mlp", "vit", "transformer", "ngram", "tfidf", "tree"] = "auto"  # auto: cnn for
    # images; the better on the validation split of mlp and tree for a table, of transformer and tfidf for a table
    # with text; transformer, ngram and tfidf take text (with any other columns beside it); tree: gradient-boosted
    # trees (a table without text)
    cnn_channels: tuple[int, int, int] = (32, 64, 128)
    mlp_hidden: tuple[int, ...] = (256, 128)
    vit_patch: int = Field(2, ge=1)  # must divide the image side
    vit_dim: int = Field(64, ge=8)
    vit_depth: int = Field(4, ge=1)
    vit_heads: int = Field(4, ge=1)
    text_dim: int = Field(64, ge=4)  # text: token embedding width (a multiple of text_heads)
    text_depth: int = Field(2, ge=1)  # transformer: encoder blocks
    text_heads: int = Field(4, ge=1)  # transformer: attention heads
    ngram_buckets: int = Field(16384, ge=0)  # ngram: hashed token-bigram embeddings beside the tokens' (0: tokens only)
    tfidf_c: tuple[float, ...] = Field((0.3, 1.0, 3.0, 10.0), min_length=1)  # tfidf: the logistic regression's
    # inverse regularisation strengths tried; the one with the lowest validation log-loss is kept
    tree_max_iter: int = Field(500, ge=1)  # tree: boosting rounds at most (stopped after `patience` rounds without a
    # validation-loss gain)
    tree_learning_rate: float = Field(0.1, gt=0, le=1)
    tree_max_leaf_nodes: int = Field(31, ge=2)
    tree_min_samples_leaf: int = Field(20, ge=1)
    tree_l2_regularization: float = Field(0.0, ge=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    epochs: int = Field(60, ge=1)
    batch_size: int = Field(64, ge=1)  # the global batch: each of N torchrun processes takes batch_size / N
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(0.002, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)  # sgd only
    weight_decay: float = Field(0.0001, ge=0)
    schedule: Literal["cosine", "onecycle"] = "cosine"
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    class_weight: Literal["none", "balanced"] = "none"  # balanced: each class's loss weighted by 1 / its train rows
    augment: AugmentParams = AugmentParams()
    patience: int = Field(10, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True
    channels_last: bool = True  # CUDA only
    compile: bool = False  # torch.compile the model (needs a C compiler; pays off on long GPU runs)
    threads: int = Field(0, ge=0)  # CPU threads; 0: the cores shared among the processes on this machine
    preload_max_mb: float = Field(256, ge=0)  # inputs up to this size go to the device once; larger ones stream from disk

    @model_validator(mode="after")
    def _heads_divide_width(self) -> TrainParams:
        if self.model == "transformer" and self.text_dim % self.text_heads:
            raise ValueError(f"text_dim ({self.text_dim}) must be a multiple of text_heads ({self.text_heads})")
        if self.model == "vit" and self.vit_dim % self.vit_heads:
            raise ValueError(f"vit_dim ({self.vit_dim}) must be a multiple of vit_heads ({self.vit_heads})")
        if any(c <= 0 for c in self.tfidf_c):
            raise ValueError(f"tfidf_c {list(self.tfidf_c)}: each strength must be > 0")
        return self


class EvaluateParams(Section):
    registered_model: str = ""  # empty: <base.name>-classifier
    min_accuracy: float = Field(0.0, ge=0, le=1)  # an absolute floor, off (0) unless set: the baselines are the bar
    min_improvement: float = Field(0.001, ge=-1, le=1)  # what a challenger must gain over the champion (gate_metric)
    max_class_regression: float = Field(0.02, ge=0, le=1)  # largest drop in any class's recall that is tolerated
    significance: float = Field(0.05, gt=0, lt=1)  # the paired test's level: a gain this likely by chance is not one
    paired_test: Literal["mcnemar", "bootstrap"] = "mcnemar"  # tasks/evaluate/gate.py
    gate_metric: Literal["accuracy", "balanced_accuracy"] = "accuracy"  # what the gate compares (champion, baselines)
    must_beat_baseline: bool = True  # a network significantly worse than the best baseline (same paired test) stays out


class CompressParams(Section):
    max_accuracy_drop: float = Field(0.005, ge=0, le=1)
    objective: Literal["latency_b1", "latency_b64", "size"] = "size"
    prune_ratio: Annotated[float, Field(ge=0, lt=1)] | Literal["auto"] = 0.5  # auto: each of auto_ratios, tried in turn
    auto_ratios: tuple[Annotated[float, Field(gt=0, lt=1)], ...] = Field((0.25, 0.5, 0.75, 0.875), min_length=1)
    finetune_epochs: int = Field(15, ge=0)
    distill_weight: float = Field(0.7, ge=0, le=1)  # share of the fine-tune loss taken from the fp32 teacher
    distill_temperature: float = Field(4.0, gt=0)
    calibration_samples: int = Field(2048, ge=1)
    calibrations: tuple[Literal["minmax", "percentile", "entropy"], ...] = Field(("minmax", "percentile"), min_length=1)
    latency_repeats: int = Field(50, ge=3)


class SweepDimension(Section):
    """One searched key: a range (`low`, `high`, `log`, `step`) or a list of `choices`."""

    low: float | None = None
    high: float | None = None
    log: bool = False  # sample evenly in log space (learning rates, weight decay)
    step: float | None = None  # a grid within the range (ints: epochs, batch size)
    choices: tuple[bool | int | float | str | tuple[int, ...], ...] = ()

    @model_validator(mode="after")
    def _range_or_choices(self) -> SweepDimension:
        if bool(self.choices) == (self.low is not None or self.high is not None):
            raise ValueError("give either choices: [...] or low: and high:, not both or neither")
        if not self.choices and (self.low is None or self.high is None or self.low >= self.high):
            raise ValueError(f"a range needs low < high (got low={self.low}, high={self.high})")
        if self.log and not self.choices and self.low <= 0:
            raise ValueError("log: true needs low > 0")
        return self


SweepObjective = Literal["accuracy", "size", "latency_b1", "latency_b64"]


class SweepParams(Section):
    """Hyperparameter and compression search (jobs/sweep/, flows/sweep.py; no stage reads these)."""

    trials: int = Field(16, ge=1)  # finished trials the study is run to (pruned and failed ones count; re-queued do not)
    parallel: int = Field(2, ge=1)  # trials at once; each gets cores / parallel threads
    storage: str = ""  # empty: a journal file in sweeps/<name>/; a path: a journal file there; postgresql://...: shared
    objectives: tuple[SweepObjective, ...] = Field(("accuracy", "size"), min_length=1)  # accuracy alone, or a front
    pruner: Literal["median", "halving", "none"] = "median"  # single objective: stop poor trials at an epoch
    screen_margin: float = Field(0.02, ge=0, le=1)  # several objectives: compress only trials this close to the best
    min_accuracy: float = Field(0.0, ge=0, le=1)  # constraint: the shipped variant's validation accuracy
    max_size_kb: float = Field(0, ge=0)  # constraint on the shipped file; 0: none
    max_latency_ms: float = Field(0, ge=0)  # constraint on the shipped variant's batch-1 latency; 0: none
    pick_within: float = Field(0.0, ge=0, le=1)  # the trial handed to the pipeline: the smallest (or fastest) one on the
    #                                              front within this of its best accuracy; 0: the most accurate
    budget_minutes: float = Field(10, gt=0)  # a trial still training after this long is stopped (pruned)
    heartbeat_seconds: int = Field(30, ge=1)  # PostgreSQL storage: a trial silent for 4 beats is failed and re-queued
    space: dict[str, SweepDimension] = {}  # dotted train.* / compress.* keys of params.yaml

    @model_validator(mode="after")
    def _space_keys(self) -> SweepParams:
        for key in self.space:
            if not key.startswith(("train.", "compress.")):
                raise ValueError(f"space: '{key}' is not a train.* or compress.* key (a sweep never changes the data)")
        return self


class PackageParams(Section):
    """The Bento's build arguments: how the service batches, scales and limits requests."""

    bento_model: str = ""  # the BentoML model's name; empty: <base.name>-classifier
    service_name: str = ""  # the Bento's name; empty: <base.name>_classifier
    batching: bool = True  # adaptive batching of concurrent /predict requests
    max_batch_size: int = Field(256, ge=1)  # images per batch, at most
    max_latency_ms: int = Field(1000, ge=1)  # a request queued longer than this is answered 503 (overload shedding)
    max_batch_wait_ms: float | None = Field(2.0, ge=0)  # the batcher's learned wait for company, capped; None: uncapped
    workers: int = Field(1, ge=1)  # server processes
    threads: int = Field(1, ge=1)  # threads per process for the model (ONNX Runtime intra-op)
    max_images_per_request: int = Field(1024, ge=1)
    max_request_mb: float = Field(8.0, gt=0)  # larger request bodies are answered 413
    max_concurrent_requests: int = Field(32, ge=1)  # in progress at once, all workers; more: 503 + Retry-After at arrival
    max_inflight_mb: float = Field(2.0, gt=0)  # request body bytes received and in progress, per worker; more: 503
    body_timeout_seconds: float = Field(10.0, gt=0)  # a body that stalls this long between two parts is answered 408
    header_timeout_seconds: float = Field(10.0, gt=0)  # a request's headers must arrive within this (else 408, closed)
    max_connections_per_client: int = Field(128, ge=1)  # open connections from one address, per worker; more: 503
    max_image_pixels: int = Field(16_000_000, ge=1)  # /predict_image: larger images are refused from their header (400)
    max_text_chars: int = Field(20_000, ge=1)  # /predict_text, /predict_rows: a longer text is refused (400), untokenized
    access_log: bool = False  # a log line per request (costs throughput; /metrics has counts and latencies)
    inline_inference: bool = True  # /predict's (and small /predict_rows) model call on the event loop; false: a thread
    tracing: bool = False  # OpenTelemetry spans per request (export them with BentoML's tracing config)
    recent_inputs: int = Field(2048, ge=1)  # inputs each worker keeps for GET /recent_inputs (drift checks)

    def build_args(self) -> dict:
        """The Bento's build arguments (bento/service/build.py ServiceArgs): every knob but the model store's name."""
        return self.model_dump(exclude={"bento_model"})


class PromoteParams(Section):
    """The serving check a candidate passes before `champion` moves to it (tasks/promote/)."""

    readiness_samples: int = Field(256, ge=1)  # test-split inputs sent to the candidate Bento
    readiness_timeout_seconds: float = Field(120, gt=0)  # to start and answer /readyz
    max_probability_diff: float = Field(1e-4, ge=0)  # largest |served - in-process| probability tolerated


class DriftParams(Section):
    """Served inputs against the training data (jobs/drift.py, flows/drift.py; no stage reads these)."""

    max_shift: float = Field(0.25, gt=0)  # a statistic's served mean may move this many training std devs
    min_samples: int = Field(200, ge=1)  # fewer recent inputs than this: too few to judge, no verdict


class ScoreParams(Section):
    """Batch scoring of new data with the champion's shipped model (jobs/score/, flows/score.py)."""

    output: str = "predictions"  # versioned outputs: <output>/<input>-<digest>/<model>-v<version>/ (DVC-tracked)
    chunk_rows: int = Field(4096, ge=1)  # rows (or image files) read, checked and scored at a time
    max_bad_fraction: float = Field(0.05, ge=0, le=1)  # quarantined share above this fails the run, writing nothing
    range_margin: float = Field(3.0, ge=0)  # training std devs beyond the training min/max a value may reach
    max_missing_fraction: float = Field(0.5, ge=0, le=1)  # a row missing more of its columns is quarantined
    max_drift_shift: float = Field(0.25, gt=0)  # a statistic's mean may move this many training std devs (reported)
    max_line_kb: float = Field(1024, gt=0)  # a CSV/TSV line (one row) longer than this sets its file aside, unread


class PipelineParams(Section):
    """How the Prefect flow runs the stages (no stage reads these)."""

    stage_timeout_minutes: float = Field(120, gt=0)  # a stage running longer is stopped and fails the run
    retries: int = Field(2, ge=0)  # for transient failures only: a crash, a kill, a lost connection
    retry_delay_seconds: float = Field(10, ge=0)  # doubled at each retry


class RolloutParams(Section):
    """Replacing a running service after a promotion (bento/front.py; no stage reads these)."""

    admin_url: str = ""  # the serving front's admin address, e.g. http://127.0.0.1:3001; empty: no service to replace
    ready_timeout_seconds: float = Field(120, gt=0)  # a new Bento not ready by then is stopped; the old one stays
    drain_timeout_seconds: float = Field(30, ge=0)  # the old Bento's in-flight requests get this long to finish


class Params(Section):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    base: BaseParams = BaseParams()
    ingest: IngestParams = IngestParams()
    prepare: PrepareParams = PrepareParams()
    validate_: ValidateParams = Field(ValidateParams(), alias="validate")
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    compress: CompressParams = CompressParams()
    package: PackageParams = PackageParams()
    promote: PromoteParams = PromoteParams()
    drift: DriftParams = DriftParams()
    score: ScoreParams = ScoreParams()
    sweep: SweepParams = SweepParams()
    pipeline: PipelineParams = PipelineParams()
    rollout: RolloutParams = RolloutParams()

    @model_validator(mode="before")
    @classmethod
    def _names_from_the_dataset(cls, raw):
        """Every name left empty follows base.name, itself from the data's file or folder name: two datasets never
        share an experiment, a registered model (and its champion) or a Bento."""
        if not isinstance(raw, dict):
            return raw
        raw = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
        sections = {key: raw.setdefault(key, {}) for key in ("base", "ingest", "evaluate", "package")}
        if not all(isinstance(v, dict) for v in sections.values()):
            return raw  # a section that is not a mapping: the field validation names it
        base, ingest, evaluate, package = sections.values()
        name = base.get("name") or dataset_name(str(ingest.get("path") or ""))
        base["name"] = name
        base["experiment"] = base.get("experiment") or f"{name}-pipeline"
        evaluate["registered_model"] = evaluate.get("registered_model") or f"{name}-classifier"
        package["bento_model"] = package.get("bento_model") or f"{name}-classifier"
        package["service_name"] = package.get("service_name") or f"{name.replace('-', '_')}_classifier"
        return raw

    def as_dict(self) -> dict:
        """The resolved config, with the section names of params.yaml."""
        return self.model_dump(mode="json", by_alias=True)

    def recorded(self) -> dict:
        """`as_dict()` as it may be recorded (MLflow, checkpoints, Bento metadata): URL passwords masked."""
        from tasks.common.secrets import redacted

        return redacted(self.as_dict())


def with_overrides(params: Params, overrides: dict) -> Params:
    """`params` with each dotted key (`train.lr`) set to its value, checked like params.yaml itself."""
    tree = params.as_dict()
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = tree
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
            if not isinstance(node, dict):
                raise ConfigError(f"'{dotted}' is not a key of params.yaml")
        if leaf not in node:
            raise ConfigError(f"'{dotted}' is not a key of params.yaml")
        node[leaf] = value
    try:
        return Params.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(f"{json.dumps(overrides)} refused: {problems(err)}") from err


def dataset_name(path: str) -> str:
    """A dataset's name from its path (`data/sources/Loans 2024.csv` → `loans-2024`); `digits` without one."""
    import re

    stem = Path(path.rstrip("/")).stem if path else "digits"
    name = re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-")
    return name or "data"


_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's: 35 ms a read of params.yaml in Python


def yaml_data(text: str):
    """YAML text as plain data, parsed by libyaml where PyYAML has it (dvc.lock and params.yaml are read at every
    stage of a run: 0.57 s of CPU a run in Python's parser, py-spy over `mlops run`)."""
    return yaml.load(text, Loader=_SAFE_LOADER)


def load_params(path: Path) -> Params:
    """Read and check params.yaml; any unknown or ill-typed key fails with its dotted name."""
    try:
        raw = yaml_data(Path(path).read_text()) or {}
    except FileNotFoundError as err:
        raise ConfigError(f"{path} not found") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"{path}: {problems(err)}") from err


def problems(err: ValidationError) -> str:
    """Each refused key by its dotted name, with why: `train.epochs: Input should be greater than or equal to 1`."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
