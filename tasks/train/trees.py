"""The tree family of the `train` stage: gradient-boosted trees (scikit-learn's HistGradientBoosting) on a table's
encoded rows, converted to ONNX (skl2onnx) so that it is evaluated, compressed, packaged and served exactly like a
network: the same input (the encoded rows, `images`), the same output (`probabilities`)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from tasks.common.config import TrainParams

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TreeFit:
    onnx: bytes  # the fitted ensemble as an ONNX graph: images (N×F float32) → probabilities (N×classes)
    rounds: int  # boosting rounds kept (early stopping on the validation split)
    seconds: float
    history: list[dict]  # per round, as a network's per epoch: train/val loss and accuracy (train: up to 5,000 rows)


def fit_tree(cfg: TrainParams, train: tuple, val: tuple, n_classes: int, seed: int) -> TreeFit:
    """Fit on the train split, stopping early on the validation split, and convert to ONNX."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    (x, y), (val_x, val_y) = train, val
    model = HistGradientBoostingClassifier(
        learning_rate=cfg.tree_learning_rate, max_iter=cfg.tree_max_iter, max_leaf_nodes=cfg.tree_max_leaf_nodes,
        min_samples_leaf=cfg.tree_min_samples_leaf, l2_regularization=cfg.tree_l2_regularization,
        early_stopping=True, n_iter_no_change=cfg.patience, class_weight=None if cfg.class_weight == "none" else
        "balanced", random_state=seed,
    )
    started = time.perf_counter()
    model.fit(np.asarray(x, np.float32), np.asarray(y), X_val=np.asarray(val_x, np.float32), y_val=np.asarray(val_y))
    seconds = time.perf_counter() - started
    log.info("tree: %d boosting rounds in %.1f s", model.n_iter_, seconds)
    history = _history(model, (x, y), val, seed)
    return TreeFit(to_onnx(model, int(np.asarray(x).shape[1]), n_classes), int(model.n_iter_), seconds, history)


def _history(model, train: tuple, val: tuple, seed: int, sample: int = 5000) -> list[dict]:
    """Loss and accuracy after each boosting round, on the validation split and a sample of the train split."""
    from sklearn.metrics import log_loss

    x, y = (np.asarray(a) for a in train)
    keep = np.random.default_rng(seed).choice(len(y), sample, replace=False) if len(y) > sample else slice(None)
    rows = [{"epoch": i + 1} for i in range(model.n_iter_)]
    for split, (sx, sy) in (("train", (x[keep], y[keep])), ("val", tuple(np.asarray(a) for a in val))):
        for row, proba in zip(rows, model.staged_predict_proba(np.asarray(sx, np.float32))):
            row[f"{split}_loss"] = float(log_loss(sy, proba, labels=model.classes_))
            row[f"{split}_accuracy"] = float((model.classes_[proba.argmax(1)] == sy).mean())
    return rows


def to_onnx(model, n_features: int, n_classes: int) -> bytes:
    """The fitted classifier as ONNX: input `images` (N×n_features float32), one output `probabilities`
    (N×n_classes float32, a column per class index even for a class the train split lacked)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.ensemble import HistGradientBoostingClassifier

    if list(model.classes_) != list(range(n_classes)):
        from tasks.common.errors import DataError

        raise DataError(f"the train split holds classes {list(model.classes_)}, not every one of 0..{n_classes - 1}")
    graph = convert_sklearn(model, initial_types=[("images", FloatTensorType([None, n_features]))],
                            options={id(model): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3},
                            custom_conversion_functions={HistGradientBoostingClassifier: _ints_not_bools})
    kept = [output for output in graph.graph.output if output.name == "probabilities"]  # the label output goes
    del graph.graph.output[:]
    graph.graph.output.extend(kept)
    return graph.SerializeToString()


def _ints_not_bools(scope, operator, container) -> None:
    """skl2onnx 1.20's own converter, with its integer-list attributes made of ints: it lists a leaf's
    `nodes_missing_value_tracks_true` as Python's False among numpy integers, which onnx 1.23's make_attribute
    refuses ("Expected an int, got a boolean"). tests/unit/test_trees.py fails naming it once that is fixed."""
    from skl2onnx.operator_converters.random_forest import convert_sklearn_random_forest_classifier

    add_node = container.add_node

    def add(*args, **attrs):
        fixed = {k: [int(v) for v in value] if isinstance(value, list) and any(isinstance(v, bool) for v in value)
                 else value for k, value in attrs.items()}
        return add_node(*args, **fixed)

    container.add_node = add
    try:
        convert_sklearn_random_forest_classifier(scope, operator, container)
    finally:
        container.add_node = add_node
