"""The tfidf family of the `train` stage, for a table with text: logistic regression over TF-IDF of the tokens and
hashed token bigrams, fitted by scikit-learn on features computed exactly as tasks/nn/models.py TfidfNet computes
them, then written into a TfidfNet, so the fitted model ships as a network (ONNX, on the same token ids)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from tasks.common.config import Params

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TfidfFit:
    model: object  # the TfidfNet, in eval mode on the CPU
    c: float  # the inverse regularisation strength kept (lowest validation log-loss among train.tfidf_c)
    seconds: float
    history: list[dict]  # one row, as a network's epoch: train/val loss and accuracy of the fitted model


def fit_tfidf(params: Params, text: dict, train: tuple, val: tuple, n_classes: int) -> TfidfFit:
    """TF-IDF (idf from the train split) + logistic regression for each of train.tfidf_c; the best on validation."""
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    from tasks.nn.models import build_model

    cfg = params.train.model_copy(update={"model": "tfidf"})
    started = time.perf_counter()
    (x, y), (val_x, val_y) = ((np.asarray(a), np.asarray(b)) for a, b in (train, val))
    counts = {"train": _counts(x, text, cfg.ngram_buckets), "val": _counts(val_x, text, cfg.ngram_buckets)}
    idf = _idf(counts["train"])
    features = {split: _features(split_x, c, idf, text) for (split, c), split_x in zip(counts.items(), (x, val_x))}
    fitted = []
    for c in cfg.tfidf_c:
        model = LogisticRegression(C=c, max_iter=2000, random_state=params.base.seed).fit(features["train"], y)
        fitted.append((log_loss(val_y, model.predict_proba(features["val"]), labels=model.classes_), c, model))
    _, c, best = min(fitted, key=lambda found: found[0])
    if list(best.classes_) != list(range(n_classes)):
        from tasks.common.errors import DataError

        raise DataError(f"the train split holds classes {list(best.classes_)}, not every one of 0..{n_classes - 1}")
    net = build_model(cfg, (x.shape[1],), n_classes, text)
    weight, bias = (best.coef_, best.intercept_) if n_classes > 2 else (
        np.vstack([np.zeros_like(best.coef_), best.coef_]), np.array([0.0, best.intercept_[0]]))  # softmax([0, z])
    with torch.no_grad():
        net.idf.copy_(torch.from_numpy(idf.reshape(text["columns"], -1)))
        net.head.weight.copy_(torch.from_numpy(weight))
        net.head.bias.copy_(torch.from_numpy(bias))
    seconds = time.perf_counter() - started
    history = [{"epoch": 1, **_scored("train", best, features["train"], y), **_scored("val", best, features["val"],
                                                                                        val_y)}]
    log.info("tfidf: logistic regression with C=%g (of %s) in %.1f s", c, list(cfg.tfidf_c), seconds)
    return TfidfFit(net.eval(), float(c), seconds, history)


def _counts(x: np.ndarray, text: dict, buckets: int):
    """Rows × (columns × (vocab + buckets)) token and bigram counts, the ids as TfidfNet reads them."""
    from scipy.sparse import csr_matrix

    dense, columns, length, vocab = text["dense"], text["columns"], text["length"], text["vocab"]
    ids = np.clip(np.rint(x[:, dense:]), 0, vocab - 1).astype(np.int64).reshape(-1, length)
    real = ids != 0
    if buckets:
        bigrams = (ids[:, :-1] * 1_000_003 + ids[:, 1:]) % buckets + vocab
        ids, real = np.hstack([ids, bigrams]), np.hstack([real, real[:, :-1] & real[:, 1:]])
    features = vocab + buckets
    block = np.repeat(np.arange(ids.shape[0]), ids.shape[1])[real.ravel()]  # (row, text column) pairs
    rows, column = block // columns, (block % columns) * features + ids.ravel()[real.ravel()]
    return csr_matrix((np.ones(len(rows)), (rows, column)), shape=(len(x), columns * features))  # repeats summed


def _idf(counts) -> np.ndarray:
    """scikit-learn's smooth idf per feature: ln((1 + n) / (1 + df)) + 1, df counted on the train split."""
    df = np.bincount(counts.indices, minlength=counts.shape[1])
    return np.log((1 + counts.shape[0]) / (1 + df)) + 1.0


def _features(x: np.ndarray, counts, idf: np.ndarray, text: dict):
    """The other columns beside sublinear TF-IDF, each text column's block L2-normalised (as TfidfNet)."""
    from scipy.sparse import csr_matrix, hstack

    weighted = counts.copy()
    weighted.data = (1.0 + np.log(weighted.data)) * idf[weighted.indices]
    block = weighted.indices // (idf.size // text["columns"])
    rows = np.repeat(np.arange(weighted.shape[0]), np.diff(weighted.indptr))
    norms = np.zeros((weighted.shape[0], text["columns"]))
    np.add.at(norms, (rows, block), weighted.data ** 2)
    weighted.data /= np.maximum(np.sqrt(norms[rows, block]), 1e-12)
    return hstack([csr_matrix(x[:, : text["dense"]].astype(np.float64)), weighted]).tocsr()


def _scored(split: str, model, features, y: np.ndarray) -> dict:
    from sklearn.metrics import log_loss

    probabilities = model.predict_proba(features)
    return {f"{split}_loss": float(log_loss(y, probabilities, labels=model.classes_)),
            f"{split}_accuracy": float((model.classes_[probabilities.argmax(1)] == y).mean())}
