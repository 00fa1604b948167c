"""Tables (CSV or Parquet): reading one with its label column, and the feature encoding fitted on the train split.

The encoding is scikit-learn's: numeric columns get median imputation then standardisation, categorical
(text) columns most-frequent imputation then one-hot encoding, with categories never seen in training
encoded as all zeros. It is fitted on the train split only and described in JSON (`describe`) so that the
service can apply the same transform without unpickling anything.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tasks.common.errors import DataError

TABLE_SUFFIXES = {".csv", ".tsv", ".parquet", ".pq"}
LABEL_NAMES = ("label", "labels", "target", "class", "y", "species", "category", "outcome")  # tried in this order
LABEL = "label"  # the raw data version names the label column this, whatever the source called it
RESERVED = {LABEL, "row_md5"}  # names the pipeline gives its own columns (validate hashes each row into row_md5)


def find_table(path: Path) -> Path:
    """`path` itself when it is a table file, else the one table file in the folder `path`."""
    if path.is_file():
        return path
    found = sorted(p for p in path.iterdir() if p.suffix.lower() in TABLE_SUFFIXES) if path.is_dir() else []
    if len(found) != 1:
        raise DataError(f"{path}: expected one .csv, .tsv or .parquet file, found {[p.name for p in found] or 'none'}")
    return found[0]


def read_table(path: Path, label_column: str, max_bytes: int = 2**30) -> pd.DataFrame:
    """The table at `path` with its label column (given, or found by a common name) renamed `label` and placed
    last; the labels as the file holds them (text, numbers, booleans). A table that would take more than
    `max_bytes` in memory is refused before it is read."""
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise DataError(f"{path}: not a table (expected .csv, .tsv or .parquet, found '{suffix}')")
    check_size(path, max_bytes)
    try:
        if suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
    except pd.errors.EmptyDataError as err:
        raise DataError(f"{path}: the file is empty (no header, no rows)") from err
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise DataError(f"{path}: not a readable {suffix[1:]} table ({err})") from err
    _refuse_duplicate_columns(path, suffix, frame)
    label_column = label_column or _label_column(path, frame)
    if label_column not in frame.columns:
        raise DataError(f"{path}: no label column '{label_column}' (ingest.label_column); columns are {list(frame.columns)}")
    if label_column != LABEL and LABEL in frame.columns:
        raise DataError(f"{path}: has a feature column named '{LABEL}' besides the label column '{label_column}'")
    if frame.empty:
        raise DataError(f"{path}: has a header but no rows")
    labels = frame.pop(label_column)
    if labels.isna().any():
        raise DataError(f"{path}: {int(labels.isna().sum())} row(s) have no label in '{label_column}'")
    frame[LABEL] = labels
    clashing = sorted(str(c) for c in frame.columns[:-1] if str(c) in RESERVED)
    if clashing:
        raise DataError(f"{path}: feature column(s) {clashing} use a name the pipeline gives its own columns "
                        f"({sorted(RESERVED)}): rename them")
    if frame.shape[1] < 2:
        raise DataError(f"{path}: has no feature columns besides the label")
    return frame


def check_size(path: Path, max_bytes: int) -> None:
    """Refuse a table whose contents would pass `max_bytes` in memory, from what it declares, before reading it: a
    Parquet file's rows × columns (8 bytes a cell at least; 700 KB of Parquet can declare 100 million rows) and
    its row groups' uncompressed sizes; a CSV's own length."""
    if path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            meta = pq.ParquetFile(path).metadata
        except (pa.ArrowException, OSError) as err:
            raise DataError(f"{path}: not a readable parquet table ({str(err).splitlines()[0][:200]})") from err
        declared = max(meta.num_rows * meta.num_columns * 8,
                       sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)))
        what = f"declares {meta.num_rows:,} rows × {meta.num_columns} columns"
    else:
        declared, what = path.stat().st_size, f"holds {path.stat().st_size:,} bytes"
    if declared > max_bytes:
        raise DataError(f"{path}: {what}, about {_mb(declared)} MB in memory, over ingest.max_table_mb "
                        f"({_mb(max_bytes)} MB): refused before reading (raise it for a table this large)")


def _mb(size: float) -> str:
    return f"{size / 2**20:,.0f}" if size >= 10 * 2**20 else f"{size / 2**20:.2g}"


def _refuse_duplicate_columns(path: Path, suffix: str, frame: pd.DataFrame) -> None:
    """Two columns of one name: pandas keeps the second as `name.1`, so a second label column would become a
    feature holding the answer. Refused by name (the header itself is read: `.1` may be a real name too)."""
    from collections import Counter

    if suffix in (".parquet", ".pq"):
        names = [str(c) for c in frame.columns]
    else:
        import csv

        with path.open(newline="", encoding="utf-8", errors="replace") as handle:
            names = next(csv.reader(handle, delimiter="\t" if suffix == ".tsv" else ","), [])
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)
    if repeated:
        raise DataError(f"{path}: the header names {repeated} more than once: rename the copies (a second label "
                        "column would be learnt from as a feature)")


def _label_column(path: Path, frame: pd.DataFrame) -> str:
    """The label column when none is given: the first column named like one (case ignored)."""
    by_lower = {str(c).lower(): c for c in frame.columns}
    for name in LABEL_NAMES:
        if name in by_lower:
            return by_lower[name]
    raise DataError(f"{path}: cannot tell which column holds the labels (none is named {', '.join(LABEL_NAMES)}); "
                    f"columns are {list(frame.columns)}: name one with --label COLUMN (ingest.label_column)")


def feature_kinds(frame: pd.DataFrame) -> tuple[list[str], list[str]]:
    """Numeric and categorical feature columns (everything that is not numeric is categorical)."""
    features = [c for c in frame.columns if c != LABEL]
    numeric = [c for c in features if pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])]
    return numeric, [c for c in features if c not in numeric]


def fit_encoder(train: pd.DataFrame):
    """A ColumnTransformer fitted on the train rows: imputation, scaling and one-hot encoding."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric, categorical = feature_kinds(train)
    encoder = ColumnTransformer(
        [("numeric", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric),
         ("categorical", make_pipeline(SimpleImputer(strategy="most_frequent"),
                                       OneHotEncoder(handle_unknown="ignore", sparse_output=False)), categorical)],
        sparse_threshold=0.0,
    )
    encoder.fit(_as_strings(train.drop(columns=[LABEL]), categorical))
    return encoder


def encode(encoder, frame: pd.DataFrame) -> np.ndarray:
    """Features as a float32 N×F matrix."""
    _, categorical = feature_kinds(frame)
    return encoder.transform(_as_strings(frame.drop(columns=[LABEL]), categorical)).astype(np.float32)


def describe(encoder) -> dict:
    """The fitted transform as plain JSON: enough to apply it anywhere, in the order of the feature matrix."""
    spec: dict = {"numeric": [], "categorical": []}
    for name, steps, columns in encoder.transformers_:
        if name == "numeric" and columns:
            imputer, scaler = steps.steps[0][1], steps.steps[1][1]
            spec["numeric"] = [{"column": c, "fill": float(f), "mean": float(m), "scale": float(s)}
                               for c, f, m, s in zip(columns, imputer.statistics_, scaler.mean_, scaler.scale_)]
        if name == "categorical" and columns:
            imputer, onehot = steps.steps[0][1], steps.steps[1][1]
            spec["categorical"] = [{"column": c, "fill": str(f), "categories": [str(v) for v in cats]}
                                   for c, f, cats in zip(columns, imputer.statistics_, onehot.categories_)]
    return spec


def _as_strings(frame: pd.DataFrame, categorical: list[str]) -> pd.DataFrame:
    """Categorical columns as object strings with NaN kept (what SimpleImputer and OneHotEncoder expect)."""
    frame = frame.copy()
    for column in categorical:
        frame[column] = frame[column].astype(object).map(lambda v: np.nan if pd.isna(v) else str(v))
    return frame
