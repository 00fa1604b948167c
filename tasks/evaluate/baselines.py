"""Baselines on every run: what a network must beat to be worth its cost, fitted on the same train split and
scored on the same test split (scikit-learn).

- majority: always the most frequent training class (the floor any model must clear);
- logistic regression on the standardised inputs (pixels, or a table's encoded features);
- for a table, gradient-boosted trees (HistGradientBoosting), the usual strong baseline on tabular data.

Large training splits are subsampled to `max_rows` for the fits (a baseline is a yardstick, not a rival run).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Baseline:
    name: str
    accuracy: float
    f1_macro: float
    fit_seconds: float
    correct: np.ndarray  # bool per test example, for the paired test against the network


def fit_baselines(train_x, train_y, test_x, test_y, kind: str, seed: int, max_rows: int = 10_000) -> list[Baseline]:
    """Each baseline fitted on (a sample of) the train split and scored on the test split."""
    from sklearn.dummy import DummyClassifier
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = _flat(train_x), np.asarray(train_y)
    if len(y) > max_rows:
        keep = np.random.default_rng(seed).choice(len(y), max_rows, replace=False)
        x, y = x[keep], y[keep]
    models = {
        "majority": DummyClassifier(strategy="most_frequent"),
        "logistic_regression": make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)),
    }
    if kind == "table":
        models["gradient_boosting"] = HistGradientBoostingClassifier(random_state=seed)
    return [_scored(name, model, x, y, _flat(test_x), np.asarray(test_y)) for name, model in models.items()]


def _scored(name: str, model, x, y, test_x, test_y) -> Baseline:
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import f1_score

    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a yardstick: 500 iterations is enough to compare with
        model.fit(x, y)
    seconds = time.perf_counter() - started
    predicted = model.predict(test_x)
    correct = predicted == test_y
    return Baseline(name, float(correct.mean()), float(f1_score(test_y, predicted, average="macro", zero_division=0)),
                    seconds, correct)


def _flat(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x.reshape(len(x), -1)


def leaderboard(network: dict, baselines: list[Baseline]) -> list[dict]:
    """The network and every baseline, best test accuracy first."""
    rows = [{"model": "network", **network}] + [
        {"model": b.name, "accuracy": b.accuracy, "f1_macro": b.f1_macro, "fit_seconds": b.fit_seconds} for b in baselines]
    return sorted(rows, key=lambda r: -r["accuracy"])
