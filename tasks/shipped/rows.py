"""Raw table rows → the model's feature matrix, with the encoding `prepare` fitted (data/prepared/meta.json).

NumPy (and `tokenizers` for text) only, so the Bento ships it (its /predict_rows) and a served row is encoded
exactly as the training rows were by scikit-learn: a missing numeric value takes the train median, then
(x - mean) / scale; a missing category takes the most frequent train category, then one-hot over the train
categories (an unseen one: all zeros); a free-text value becomes token ids with the tokenizer learnt in prepare
(tasks/shipped/text.py; a missing text is the empty text).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from tasks.shipped.text import BadText, encode_texts, load_tokenizer, text_value


MAX_ENCODED = 1e6  # an encoded value further than this many training standard deviations is refused: the model's
                   # output would overflow to NaN on it, and no real row is that far out


_FLOAT_MAX = int(np.finfo(np.float64).max)


class BadRow(ValueError):
    """A row that cannot be encoded; the message names the row and the column."""


def encode_rows(rows: list[dict], spec: dict) -> np.ndarray:
    """An N×F float32 matrix, in the column order of `spec` (tasks.common.tables.describe)."""
    numeric, categorical, text = spec["numeric"], spec["categorical"], spec.get("text", [])
    expected = [c["column"] for c in numeric] + [c["column"] for c in categorical] + [c["column"] for c in text]
    width = len(numeric) + sum(len(c["categories"]) for c in categorical)
    out = np.zeros((len(rows), width), dtype=np.float32)
    texts: list[list[str]] = [[] for _ in text]
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise BadRow(f"row {i}: expected an object of column → value, got {type(row).__name__}")
        missing = [c for c in expected if c not in row]
        unknown = [c for c in row if c not in expected]
        if missing or unknown:
            raise BadRow(f"row {i}: " + "; ".join(
                part for part in (f"missing columns {missing} (send null for an unknown value)" if missing else "",
                                  f"unknown columns {unknown}" if unknown else "") if part)
                + f"; the columns are {expected}")
        for j, column in enumerate(numeric):
            value = row[column["column"]]
            if _missing(value):
                value = column["fill"]
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                raise BadRow(f"row {i}, column '{column['column']}': expected a number or null, got {_shown(value)}")
            elif isinstance(value, int) and abs(value) > _FLOAT_MAX:  # hundreds of digits: no float holds it
                raise BadRow(f"row {i}, column '{column['column']}': an integer too large for any number "
                             f"({value.bit_length()} bits)")
            elif not math.isfinite(value):
                raise BadRow(f"row {i}, column '{column['column']}': {value} is not a finite number")
            encoded = (float(value) - column["mean"]) / column["scale"]
            if abs(encoded) > MAX_ENCODED:
                low, high = _raw_range(column)
                raise BadRow(f"row {i}, column '{column['column']}': {value} is outside [{low:.6g}, {high:.6g}] "
                             f"({MAX_ENCODED:g} training standard deviations from the mean)")
            out[i, j] = encoded
        offset = len(numeric)
        for column in categorical:
            value = row[column["column"]]
            if not _missing(value) and not isinstance(value, (str, int, float)):  # bool is an int: "True" as trained
                raise BadRow(f"row {i}, column '{column['column']}': expected a category (text, a number or a boolean "
                             f"used as one) or null, got {_shown(value)}")
            value = column["fill"] if _missing(value) else str(value)
            if value in column["categories"]:
                out[i, offset + column["categories"].index(value)] = 1.0
            offset += len(column["categories"])
        for k, column in enumerate(text):
            try:
                texts[k].append(text_value(row[column["column"]], f"row {i}, column '{column['column']}'"))
            except BadText as err:
                raise BadRow(str(err)) from err
    return np.hstack([out, *_token_ids(texts, spec)]) if text else out


def encode_frame(frame, spec: dict) -> np.ndarray:
    """`encode_rows` of a DataFrame's rows at once (batch scoring: a chunk of rows without a Python loop over its
    cells for numbers), equal to it bit for bit (tests/unit/test_rows.py). The rows must be ones `encode_rows`
    takes without complaint (numbers finite and within MAX_ENCODED, categories text, numbers or null, texts text or
    null): jobs/score/chunk.py screens them first."""
    numeric, categorical, text = spec["numeric"], spec["categorical"], spec.get("text", [])
    parts = [np.zeros((len(frame), 0), np.float32)]
    if numeric:
        parts.append(encode_numbers(
            np.column_stack([frame[c["column"]].to_numpy(np.float64, na_value=np.nan) for c in numeric]), numeric))
    for column in categorical:
        where = {category: k for k, category in enumerate(column["categories"])}
        codes = np.array([where.get(v, -1) for v in _cells(frame[column["column"]], column["fill"], str)], np.int64)
        hot = np.zeros((len(frame), len(column["categories"])), np.float32)
        hot[np.flatnonzero(codes >= 0), codes[codes >= 0]] = 1.0
        parts.append(hot)
    texts = [_cells(frame[c["column"]], "", lambda value: value) for c in text]
    return np.hstack([*parts, *_token_ids(texts, spec)]) if text else np.hstack(parts)


def encode_numbers(values: np.ndarray, numeric: list[dict]) -> np.ndarray:
    """The numeric columns' part of `encode_frame`, from their values (N × columns, float64, NaN where missing)."""
    values = np.where(np.isnan(values), [c["fill"] for c in numeric], values)
    return ((values - [c["mean"] for c in numeric]) / [c["scale"] for c in numeric]).astype(np.float32)


def _cells(series, fill, read) -> list:
    """A column's cells as encode_rows reads them: `fill` where missing (None, NaN, pandas' NA), else `read(cell)`."""
    return [fill if missing else read(value) for value, missing in zip(series.tolist(), series.isna().tolist())]


def _token_ids(texts: list[list[str]], spec: dict) -> list[np.ndarray]:
    """Each text column's N×length token ids, as float32 (the model's one input matrix)."""
    tokenizer = _tokenizer(spec["tokenizer"])
    return [encode_texts(tokenizer, column, spec["text"][k]["length"])[0].astype(np.float32)
            for k, column in enumerate(texts)]


@functools.lru_cache(maxsize=4)
def _tokenizer(serialized: str):
    return load_tokenizer(serialized)


def _shown(value, limit: int = 40) -> str:
    """A value as an error message quotes it: cut to `limit` characters (a message goes to logs, MLflow, a DVC
    remote: neither a megabyte of text nor a whole cell of someone's data belongs there)."""
    text = repr(value) if not isinstance(value, (list, dict)) else type(value).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _raw_range(column: dict) -> tuple[float, float]:
    """The raw values of a numeric column whose encoding stays within ±MAX_ENCODED."""
    return column["mean"] - MAX_ENCODED * column["scale"], column["mean"] + MAX_ENCODED * column["scale"]


def row_schema(spec: dict) -> dict:
    """One raw row as the service takes it, as an OpenAPI 3.0 schema: every column required, nothing else."""
    properties = {c["column"]: {"type": "number", "nullable": True, "minimum": _raw_range(c)[0],
                                "maximum": _raw_range(c)[1]} for c in spec["numeric"]}
    properties |= {c["column"]: {"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}], "nullable": True,
                                 "description": f"one of {c['categories'][:20]}; another encodes as all zeros"}
                   for c in spec["categorical"]}
    properties |= {c["column"]: {"type": "string", "nullable": True, "description": "free text (null: empty); "
                                 f"the first {c['length']} tokens are read"} for c in spec.get("text", [])}
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}
