"""Leakage: examples of the val or test split identical to a training example. A model scored on examples it
trained on looks better than it is, and the gate's comparison means nothing.

Images are compared by their pixels, table rows by their feature values (the label left out: the same features
with another label leak just as much), texts after the tokenizer's normalisation.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np


def example_hashes(split_dir: Path, kind: str, text: list[str] | tuple = ()) -> list[str]:
    """One hash per example of a prepared split: its pixels, or its raw feature values (`text` columns as the
    tokenizer normalises them: texts that differ only in case or accents are the same example, as prepare splits)."""
    if kind == "table":
        import pandas as pd

        from tasks.common.tables import LABEL, example_keys

        rows = pd.read_parquet(split_dir / "rows.parquet").drop(columns=[LABEL])
        return [f"{h:016x}" for h in example_keys(rows, text)]
    x = np.load(split_dir / "x.npy", mmap_mode="r")
    return [hashlib.md5(np.ascontiguousarray(row).tobytes()).hexdigest() for row in x]


def leaked(train: list[str], held_out: list[str]) -> list[tuple[int, int]]:
    """(held-out row, train row) for every held-out example identical to a training one, in row order."""
    first = {}
    for i, h in enumerate(train):
        first.setdefault(h, i)
    return [(i, first[h]) for i, h in enumerate(held_out) if h in first]


def describe(split: str, pairs: list[tuple[int, int]], rows: int) -> str:
    """`3 of 360 test rows are identical to train rows (test row 5 = train row 17, ...)`."""
    shown = ", ".join(f"{split} row {i} = train row {j}" for i, j in pairs[:5])
    found = f"{len(pairs)} of {rows} {split} rows are identical to train rows"
    return f"{found} ({shown}{', …' if len(pairs) > 5 else ''})" if pairs else found


def conflicting_labels(hashes: list[str], labels: np.ndarray, names: list[str]) -> dict:
    """Identical examples that carry different labels, over the whole version: how many, and the first few with
    their labels. Not a failure (two annotators can disagree), but a model cannot learn both: a data owner wants to
    know. prepare keeps each such group in one split."""
    seen: dict[str, set[int]] = {}
    for h, label in zip(hashes, labels.tolist()):
        seen.setdefault(h, set()).add(int(label))
    conflicts = [sorted(found) for found in seen.values() if len(found) > 1]
    return {"examples": len(conflicts), "labels_of_first": [[names[k] for k in found] for found in conflicts[:5]]}
