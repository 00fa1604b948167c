"""Tables (CSV or Parquet): reading one with its label column, and the feature encoding fitted on the train split.

The encoding is scikit-learn's: numeric columns get median imputation then standardisation, categorical
columns most-frequent imputation then one-hot encoding, with categories never seen in training encoded as all
zeros; free-text columns (told apart by ingest) become token ids, with a tokenizer learnt from the train split.
It is fitted on the train split only and described in JSON (`describe`) so that the service can apply the same
transform without unpickling anything.
"""

from __future__ import annotations

from dataclasses import dataclass
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


def read_table(path: Path, label_column: str, max_bytes: int = 2**30, fallback_encoding: str = "") -> pd.DataFrame:
    """The table at `path` with its label column (given, or found by a common name) renamed `label` and placed
    last; the labels as the file holds them (text, numbers, booleans). A table that would take more than
    `max_bytes` in memory is refused before it is read. A CSV is read as UTF-8, else as `fallback_encoding` when
    one is given, else refused naming the first bad byte."""
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise DataError(f"{path}: not a table (expected .csv, .tsv or .parquet, found '{suffix}')")
    check_size(path, max_bytes)
    try:
        if suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        else:
            frame = _read_csv(path, suffix, fallback_encoding)
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


def _read_csv(path: Path, suffix: str, fallback_encoding: str) -> pd.DataFrame:
    sep = "\t" if suffix == ".tsv" else ","
    try:
        return pd.read_csv(path, sep=sep, encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        if not fallback_encoding:
            raise DataError(f"{path}: not UTF-8 text (byte 0x{err.object[err.start]:02x} near byte {err.start} of a "
                            "block): save it as UTF-8, or name its encoding in ingest.text_fallback_encoding") from err
    return pd.read_csv(path, sep=sep, encoding=fallback_encoding)


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


def infer_text_columns(frame: pd.DataFrame, given: list[str], min_distinct: float, min_words: float) -> list[str]:
    """The free-text feature columns: `given` (ingest.text_columns) when it names any, else each non-numeric column
    whose values are mostly distinct (at least `min_distinct` of its non-empty values) and several words long (at
    least `min_words` on average), as AutoGluon tells text from a category. Everything else stays as it was."""
    features = [c for c in frame.columns if c != LABEL]
    if given:
        unknown = [c for c in given if c not in features]
        if unknown:
            raise DataError(f"ingest.text_columns names {unknown}, not feature columns of the table: {features}")
        return list(given)
    numeric, _ = feature_kinds(frame)
    found = []
    for column in (c for c in features if c not in numeric and not pd.api.types.is_bool_dtype(frame[c])):
        values = frame[column].dropna().astype(str)
        values = values[values.str.strip() != ""]
        if len(values) and values.nunique() >= min_distinct * len(values) \
                and values.str.split().str.len().mean() >= min_words:
            found.append(column)
    return found


def feature_kinds(frame: pd.DataFrame, text: list[str] | tuple = ()) -> tuple[list[str], list[str]]:
    """Numeric and categorical feature columns (everything that is not numeric nor a `text` column is categorical)."""
    features = [c for c in frame.columns if c != LABEL and c not in text]
    numeric = [c for c in features if pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])]
    return numeric, [c for c in features if c not in numeric]


def example_keys(features: pd.DataFrame, text: list[str] | tuple = ()) -> np.ndarray:
    """One key per row of `features` (the label left out): identical rows, whatever their label, share it; a text
    counts as identical to another when the tokenizer's normalisation makes them equal (case, accents, spacing: the
    same example to the model). What prepare splits by, and what validate calls a leak or a conflict."""
    from tasks.common.tokenizer import untrained
    from tasks.shipped.text import normalized

    if text:
        tokenizer, features = untrained(), features.copy()
        for column in text:
            features[column] = [normalized(tokenizer, "" if pd.isna(v) else str(v)) for v in features[column]]
    return pd.util.hash_pandas_object(features, index=False).to_numpy()


def text_of(columns: dict[str, str]) -> list[str]:
    """The text columns of a data description's `columns` (column → numeric | categorical | text)."""
    return [c for c, kind in columns.items() if kind == "text"]


@dataclass
class TableEncoder:
    """The transform prepare fits on the train rows: scikit-learn's for numeric and categorical columns (None when
    the table has neither), and the tokenizer (its JSON string) with the token length for the text columns."""

    columns: object
    text: list[str]
    length: int = 0
    tokenizer: str = ""


def fit_encoder(train: pd.DataFrame, text: list[str] | tuple = (), vocab_size: int = 8000,
                max_tokens: int = 128) -> TableEncoder:
    """Fitted on the train rows: imputation, scaling and one-hot encoding; a tokenizer learnt from the text columns."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric, categorical = feature_kinds(train, text)
    columns = None
    if numeric or categorical:
        columns = ColumnTransformer(
            [("numeric", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric),
             ("categorical", make_pipeline(SimpleImputer(strategy="most_frequent"),
                                           OneHotEncoder(handle_unknown="ignore", sparse_output=False)), categorical)],
            sparse_threshold=0.0,
        )
        columns.fit(_as_strings(train[numeric + categorical], categorical))
    if not text:
        return TableEncoder(columns, [])
    from tasks.common.tokenizer import train_tokenizer

    from tasks.shipped.text import encode_texts, load_tokenizer

    texts = [v for c in text for v in _texts(train[c])]
    tokenizer = train_tokenizer(texts, vocab_size)
    # as long as the longest training text, in steps of 8, up to max_tokens: short messages are not padded to 128
    longest = int(encode_texts(load_tokenizer(tokenizer), texts, 1)[1].max(initial=1))
    return TableEncoder(columns, list(text), min(max_tokens, -(-longest // 8) * 8), tokenizer)


def encode(encoder: TableEncoder, frame: pd.DataFrame) -> np.ndarray:
    """Features as a float32 N×F matrix: the encoded numeric and categorical columns, then each text column's
    `length` token ids (whole numbers, exact in float32 below 2**24)."""
    from tasks.shipped.text import encode_texts, load_tokenizer

    parts = []
    if encoder.columns is not None:
        numeric, categorical = feature_kinds(frame, encoder.text)
        parts.append(encoder.columns.transform(_as_strings(frame[numeric + categorical], categorical)))
    if encoder.text:
        tokenizer = load_tokenizer(encoder.tokenizer)
        parts += [encode_texts(tokenizer, _texts(frame[c]), encoder.length)[0] for c in encoder.text]
    return np.hstack(parts).astype(np.float32) if parts else np.zeros((len(frame), 0), np.float32)


def describe(encoder: TableEncoder) -> dict:
    """The fitted transform as plain JSON: enough to apply it anywhere, in the order of the feature matrix."""
    spec: dict = {"numeric": [], "categorical": []}
    for name, steps, columns in encoder.columns.transformers_ if encoder.columns is not None else ():
        if name == "numeric" and columns:
            imputer, scaler = steps.steps[0][1], steps.steps[1][1]
            spec["numeric"] = [{"column": c, "fill": float(f), "mean": float(m), "scale": float(s)}
                               for c, f, m, s in zip(columns, imputer.statistics_, scaler.mean_, scaler.scale_)]
        if name == "categorical" and columns:
            imputer, onehot = steps.steps[0][1], steps.steps[1][1]
            spec["categorical"] = [{"column": c, "fill": str(f), "categories": [str(v) for v in cats]}
                                   for c, f, cats in zip(columns, imputer.statistics_, onehot.categories_)]
    if encoder.text:
        from tasks.shipped.text import load_tokenizer

        spec["text"] = [{"column": c, "length": encoder.length} for c in encoder.text]
        spec["vocab_size"] = load_tokenizer(encoder.tokenizer).get_vocab_size()
        spec["tokenizer"] = encoder.tokenizer
    return spec


def _texts(column: pd.Series) -> list[str]:
    """A text column's cells as strings: a missing one is the empty text."""
    return ["" if pd.isna(v) else str(v) for v in column.tolist()]


def _as_strings(frame: pd.DataFrame, categorical: list[str]) -> pd.DataFrame:
    """Categorical columns as object strings with NaN kept (what SimpleImputer and OneHotEncoder expect)."""
    frame = frame.copy()
    for column in categorical:
        frame[column] = frame[column].astype(object).map(lambda v: np.nan if pd.isna(v) else str(v))
    return frame
