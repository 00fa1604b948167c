"""Train/serve skew: what the training inputs looked like, and how far served inputs stray from it.

Shipped inside the Bento (NumPy only). `expectations` runs at package time on the training split and is
stored in the BentoML model's metadata; the service counts each served input that breaks them
(`violations`); `drift` compares a sample of served inputs with them, statistic by statistic, with the rule
`validate` applies between data versions: a statistic's mean may move `max_shift` training standard deviations.

Per input, the statistics are those `validate` checks per image (min, max, mean and standard deviation of its
intensities), or each encoded feature for a table; a text column's token ids count by what they say of the text:
its length in tokens and its share of unknown tokens (ids themselves are names, not quantities).
"""

from __future__ import annotations

import numpy as np


UNKNOWN_ID = 1  # tasks/shipped/text.py: [UNK]


def statistics(inputs: np.ndarray, kind: str, text: dict | None = None) -> dict[str, np.ndarray]:
    """One value per input for each statistic, from raw served inputs (N×H×W intensities, or N×F features; `text`:
    where a row's token ids sit, tasks/common/tables.py text_layout)."""
    flat = np.asarray(inputs, dtype=np.float64).reshape(len(inputs), -1)
    if kind == "table":
        dense = text["dense"] if text else flat.shape[1]
        found = {f"feature_{i}": flat[:, i] for i in range(dense)}
        for k in range(text["columns"] if text else 0):
            ids = flat[:, dense + k * text["length"]: dense + (k + 1) * text["length"]]
            tokens = (ids != 0).sum(1)
            found[f"text_{k}_tokens"] = tokens.astype(np.float64)
            found[f"text_{k}_unknown_share"] = (ids == UNKNOWN_ID).sum(1) / np.maximum(tokens, 1)
        return found
    return {"pixel_min": flat.min(1), "pixel_max": flat.max(1), "pixel_mean": flat.mean(1), "pixel_std": flat.std(1)}


def expectations(train_inputs: np.ndarray, kind: str, data_version: str, text: dict | None = None) -> dict:
    """The training inputs' range and spread of each statistic (JSON-ready, for the Bento's metadata)."""
    found = statistics(train_inputs, kind, text)
    return {
        "kind": kind,
        **({"text": text} if text else {}),  # BentoML's metadata takes no null
        "data_version": data_version,
        "samples": int(len(train_inputs)),
        "statistics": {name: {"min": float(v.min()), "max": float(v.max()), "mean": float(v.mean()),
                              "std": float(v.std())} for name, v in found.items()},
    }


def violations(inputs: np.ndarray, kind: str, expected: dict) -> dict[str, int]:
    """How many inputs fall outside the training range of each statistic; a constant image (no ink, or all
    ink) is its own check, as in `validate`."""
    found = statistics(inputs, kind, expected.get("text"))
    counts = {}
    for name, values in found.items():
        bounds = expected["statistics"].get(name)
        if bounds is not None:
            outside = int(np.sum((values < bounds["min"]) | (values > bounds["max"])))
            if outside:
                counts[name] = outside
    if kind != "table" and (constant := int(np.sum(found["pixel_std"] == 0))):
        counts["constant_image"] = constant
    return counts


def drift(inputs: np.ndarray, kind: str, expected: dict, max_shift: float) -> dict:
    """Each statistic's shift of the served mean from the training mean, in training standard deviations (with
    a floor of 1 % of the training range, as `validate`: a statistic that never varied may still wobble)."""
    found = statistics(inputs, kind, expected.get("text"))
    return drift_of_means({name: float(values.mean()) for name, values in found.items()}, len(inputs), expected,
                          max_shift)


def drift_of_means(means: dict[str, float], samples: int, expected: dict, max_shift: float) -> dict:
    """`drift` from each statistic's mean over the inputs (batch scoring accumulates them chunk by chunk)."""
    shifts = {}
    for name, mean in means.items():
        ref = expected["statistics"][name]
        scale = max(ref["std"], 0.01 * (ref["max"] - ref["min"]), 1e-12)
        shifts[name] = {"served_mean": float(mean), "training_mean": ref["mean"],
                        "shift": float(abs(mean - ref["mean"]) / scale)}
    worst = max(shifts, key=lambda n: shifts[n]["shift"])
    return {"samples": int(samples), "data_version": expected.get("data_version", ""), "max_shift": max_shift,
            "worst": worst, "score": shifts[worst]["shift"], "drifted": shifts[worst]["shift"] > max_shift,
            "statistics": shifts}
