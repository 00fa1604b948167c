"""Baselines on every run: what a network must beat to be worth its cost, fitted on the same train split and
scored on the same test split (scikit-learn).

- majority: always the most frequent training class (the floor any model must clear);
- logistic regression on the standardised inputs (pixels, or a table's encoded features);
- for a table, gradient-boosted trees (HistGradientBoosting), the usual strong baseline on tabular data;
- for text, TF-IDF of word unigrams and bigrams + logistic regression (strong on small text sets), with a table's
  other columns beside the text; the trees and the plain logistic regression then see only those other columns
  (token ids are names, not quantities).

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


@dataclass(frozen=True)
class Texts:
    """A text table's texts per example (its text columns joined), and the width of its other encoded columns."""

    train: list[str]
    test: list[str]
    dense: int


def fit_baselines(train_x, train_y, test_x, test_y, kind: str, seed: int, max_rows: int = 10_000,
                  texts: Texts | None = None) -> list[Baseline]:
    """Each baseline fitted on (a sample of) the train split and scored on the test split."""
    from sklearn.dummy import DummyClassifier
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y, test_x = _flat(train_x), np.asarray(train_y), _flat(test_x)
    keep = np.random.default_rng(seed).choice(len(y), max_rows, replace=False) if len(y) > max_rows else slice(None)
    x, y = x[keep], y[keep]
    models = {"majority": DummyClassifier(strategy="most_frequent")}
    if texts is not None:
        x, test_x = x[:, : texts.dense], test_x[:, : texts.dense]
        train_texts = np.asarray(texts.train, dtype=object)[keep].tolist()
        models["tfidf_logistic_regression"] = (_tfidf_logistic(seed, texts.dense), train_texts, texts.test)
    if texts is None or texts.dense:
        models["logistic_regression"] = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
        if kind == "table":
            models["gradient_boosting"] = HistGradientBoostingClassifier(random_state=seed)
    scored = []
    for name, model in models.items():
        if isinstance(model, tuple):  # text beside the other columns: one frame of both
            model, fit_texts, test_texts = model
            scored.append(_scored(name, model, _with_text(x, fit_texts), y, _with_text(test_x, test_texts),
                                  np.asarray(test_y)))
        else:
            scored.append(_scored(name, model, x, y, test_x, np.asarray(test_y)))
    return scored


def _tfidf_logistic(seed: int, dense: int):
    """TF-IDF (word unigrams and bigrams, sublinear counts) of the `text` column, the other columns standardised,
    then logistic regression."""
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    parts = [("text", TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True), "text")]
    if dense:
        parts.append(("other", StandardScaler(), [f"x{i}" for i in range(dense)]))
    return make_pipeline(ColumnTransformer(parts), LogisticRegression(max_iter=1000, random_state=seed))


def _with_text(x: np.ndarray, texts: list[str]):
    import pandas as pd

    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(x.shape[1])])
    frame["text"] = texts
    return frame


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


def leaderboard(network: dict, baselines: list[Baseline], family: str = "network") -> list[dict]:
    """The trained model (its family's name: network or tree) and every baseline, best test accuracy first."""
    rows = [{"model": family, **network}] + [
        {"model": b.name, "accuracy": b.accuracy, "f1_macro": b.f1_macro, "fit_seconds": b.fit_seconds} for b in baselines]
    return sorted(rows, key=lambda r: -r["accuracy"])
