"""Labels of any type to one class vocabulary: the ordered class names and each row's index into them.

The vocabulary is built once, from every row of the data version (never per split), so that index 3 means the
same class in train, val, test, the model's output and the served answer. Names are the labels as text; numbers
(integers, booleans, integer codes stored as text, numeric folder names) are ordered as numbers, anything else
alphabetically. A target that looks like a quantity (fractional numbers, or almost one value per row) is refused:
this pipeline trains classifiers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tasks.common.config import class_name
from tasks.common.errors import DataError

MAX_CLASSES = 1000  # more distinct labels than this is an id or a quantity column, not a class


@dataclass(frozen=True)
class Vocabulary:
    classes: list[str]  # class names, in the order of the model's outputs
    problem: str  # binary | multiclass
    reason: str  # how the problem type was told, for the report


def encode_labels(values, where: str) -> tuple[np.ndarray, Vocabulary]:
    """Each label's class index (int64) and the vocabulary; a DataError naming `where` for labels that cannot be
    classes (missing, fractional, one per row)."""
    import pandas as pd

    labels = pd.Series(np.asarray(values, dtype=object) if not isinstance(values, pd.Series) else values)
    nested = next((v for v in labels if isinstance(v, (list, tuple, dict, set, np.ndarray))), None)
    if nested is not None:
        raise DataError(f"{where}: the labels hold {type(nested).__name__}s (e.g. {str(nested)[:60]}), not one class "
                        "per row: give a column of class names or ids")
    if labels.isna().any():
        raise DataError(f"{where}: {int(labels.isna().sum())} row(s) have no label")
    codes, distinct = pd.factorize(labels)  # names and order are worked out once per distinct value, not per row
    names = [class_name(v) for v in distinct]
    ordered = sorted(set(zip(_sort_keys(distinct, where), names)))  # 1, 1.0 and "1" are one class, "1"
    classes = [name for _, name in ordered]
    _check_is_classification(classes, len(labels), where)
    index = {name: i for i, name in enumerate(classes)}
    problem = "binary" if len(classes) == 2 else "multiclass"
    kind = "numbers" if all(isinstance(k[1], float) for k, _ in ordered) else "text"
    reason = f"{len(classes)} distinct labels ({kind}) in {len(labels)} rows"
    return np.asarray([index[n] for n in names], dtype=np.int64)[codes], Vocabulary(classes, problem, reason)


def _sort_keys(labels, where: str) -> list[tuple[int, float | str]]:
    """Numbers (and text that reads as an integer) before, and ordered as, numbers; other text alphabetically."""
    keys = []
    for value in labels:
        if isinstance(value, (bool, np.bool_, int, np.integer)):
            keys.append((0, float(value)))
        elif isinstance(value, (float, np.floating)):
            if not float(value).is_integer():
                raise DataError(f"{where}: the label {value!r} is a fractional number: this looks like a regression "
                                "target (a quantity to predict), and this pipeline trains classifiers. Use a column "
                                "of class names or ids")
            keys.append((0, float(value)))
        else:
            text = str(value).strip()
            keys.append((0, float(int(text))) if _is_integer_text(text) else (1, text))
    return keys


MAX_NUMBER_DIGITS = 300  # longer integer text is a name (a float holds no more, and int() refuses 4,300+ digits)


def _is_integer_text(text: str) -> bool:
    """ASCII digits only: "²" and "٣" are digits to str.isdigit, not to int()."""
    digits = text.lstrip("+-")
    return digits.isascii() and digits.isdigit() and len(digits) <= MAX_NUMBER_DIGITS


def _check_is_classification(classes: list[str], rows: int, where: str) -> None:
    if len(classes) < 2:
        raise DataError(f"{where}: every row has the label {classes[0]!r}: a classifier needs at least 2 classes")
    if len(classes) > MAX_CLASSES or (len(classes) > 20 and len(classes) > rows / 2):
        raise DataError(f"{where}: {len(classes)} distinct labels in {rows} rows: this looks like an id or a "
                        "quantity (a regression target), not classes; a class needs several rows")
