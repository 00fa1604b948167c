"""Table rows in batch scoring: a chunk's rows encoded at once (`encode_frame`) equal the service's row by row
encoding (`encode_rows`) bit for bit, and the column-at-a-time screen (`_plain_rows`) lets through exactly the rows
the one-row checks would, so a chunk's predictions, reasons and imputed counts are what they were row by row."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from jobs.score.chunk import Limits, _number_inputs, _one_row, _plain_rows, _table_inputs
from jobs.score.reader import Chunk
from tasks.common.tables import LABEL, describe, fit_encoder
from tasks.shipped.rows import encode_frame, encode_rows
from tasks.shipped.skew import expectations
from tests.support.own_data import tickets

LIMITS = Limits(range_margin=3.0, max_missing_fraction=0.5, max_image_pixels=1, max_text_chars=200)


@pytest.fixture(scope="module")
def spec():
    rng = np.random.default_rng(0)
    train = tickets(300, seed=1).rename(columns={"queue": LABEL}).assign(
        width=rng.normal(10, 2, 300).round(2), count=rng.integers(0, 50, 300))
    train[LABEL] = train[LABEL].astype("category").cat.codes.astype("int64")
    return describe(fit_encoder(train, ["message"], vocab_size=300, max_tokens=16))


def _awkward(spec: dict, rows: int = 400) -> pd.DataFrame:
    """New rows of every kind: missing cells, unseen and numeric categories, far-out numbers, empty and over-long
    texts, integers and floats."""
    rng = np.random.default_rng(7)
    frame = tickets(rows, seed=3)[["message", "channel"]].assign(
        width=rng.normal(10, 2, rows).round(2), count=rng.integers(0, 50, rows))
    frame.loc[rng.choice(rows, 40), "width"] = np.nan
    frame.loc[rng.choice(rows, 20), "width"] = 1e6  # far outside the training range
    frame.loc[rng.choice(rows, 30), "channel"] = None
    frame.loc[rng.choice(rows, 10), "channel"] = "fax"  # unseen: all zeros
    frame.loc[rng.choice(rows, 15), "message"] = None
    frame.loc[rng.choice(rows, 10), "message"] = "   "
    frame.loc[rng.choice(rows, 5), "message"] = "refund " * 100  # over max_text_chars
    frame.loc[rng.choice(rows, 20), ["width", "channel"]] = [np.nan, None]  # 2 of 4 missing: still scored
    frame.loc[rng.choice(rows, 8), ["width", "channel", "count"]] = [np.nan, None, np.nan]  # 3 of 4: set aside
    return frame[[c["column"] for part in ("numeric", "categorical", "text") for c in spec[part]]]


def test_a_frame_encodes_as_its_rows_do_one_by_one(spec):
    frame = _awkward(spec)
    frame = frame[frame["message"].notna() & (frame["width"].abs() < 1e3) | frame["width"].isna()]
    frame = frame.assign(message=frame["message"].fillna(""))
    records = [{k: None if pd.isna(v) else v for k, v in row.items()} for row in frame.to_dict("records")]
    assert np.array_equal(encode_frame(frame, spec), encode_rows(records, spec))


def test_a_chunk_scores_as_it_did_row_by_row(spec):
    frame = _awkward(spec)
    x = encode_frame(frame.dropna().query("abs(width) < 1e3"), spec)  # training-like inputs for the range checks
    meta = {"encoding": spec, "served_shape": [x.shape[1]], "expectations": expectations(x, "table", "v1")}
    import io

    as_text = frame["width"].map(lambda v: None if pd.isna(v) else repr(float(v)))  # a CSV column with bad cells
    for every, cell in ((40, "n/a?"), (41, "nan"), (43, "inf"), (47, " 7 "), (53, "1e400")):
        as_text = as_text.where(frame.index % every != 5, cell)
    for data in (frame, frame.astype({"width": object, "count": "Int64"}),  # a column read as text, nullable ints
                 frame.assign(count=frame["count"].astype(object).where(frame.index % 50 != 0, "many")),
                 frame.assign(width=as_text), pd.read_csv(io.StringIO(frame.assign(width=as_text).to_csv(index=False)))):
        positions, features, quarantined, imputed = _table_inputs(Chunk(0, list(range(len(data))), data), meta,
                                                                  LIMITS)
        one_by_one = [_one_row(row, spec, meta, LIMITS) for row in data.to_dict("records")]
        assert positions == [i for i, (_, reason, _) in enumerate(one_by_one) if not reason]
        assert np.array_equal(features, np.asarray([e for e, reason, _ in one_by_one if not reason], np.float32))
        assert quarantined == [(i, reason) for i, (_, reason, _) in enumerate(one_by_one) if reason]
        assert imputed == sum(missing for _, reason, missing in one_by_one if not reason)
        assert 0 < len(quarantined) < len(data) // 4 and imputed > 0
        assert _plain_rows(data, meta, LIMITS)[0].mean() > 0.7  # a column's few bad cells: its other rows at once


def test_a_chunk_of_numbers_is_encoded_at_once_as_its_rows_are_one_by_one():
    rng = np.random.default_rng(3)
    train = pd.DataFrame({"a": rng.normal(5, 2, 200), "b": rng.integers(0, 9, 200), LABEL: rng.integers(0, 2, 200)})
    spec = describe(fit_encoder(train))
    x = encode_frame(train, spec)
    meta = {"encoding": spec, "served_shape": [x.shape[1]], "expectations": expectations(x, "table", "v1")}
    new = pd.DataFrame({"id": np.arange(300), "b": rng.integers(0, 9, 300), "a": rng.normal(5, 2, 300)})
    new.loc[[3, 70], "a"] = np.nan  # imputed, as in training
    chunk = Chunk(0, list(range(300)), new)  # another column first, the model's in another order
    positions, features, quarantined, imputed = _table_inputs(chunk, meta, LIMITS)
    rows = [{k: None if pd.isna(v) else v for k, v in row.items()} for row in new[["a", "b"]].to_dict("records")]
    assert _number_inputs(chunk, meta, LIMITS) is not None  # at once
    assert positions == list(range(300)) and quarantined == [] and imputed == 2
    assert np.array_equal(features, encode_rows(rows, spec))
    new.loc[5, "a"] = 1e9  # a row to set aside: the chunk takes the general path, which names it
    assert _number_inputs(chunk, meta, LIMITS) is None
    positions, features, quarantined, imputed = _table_inputs(chunk, meta, LIMITS)
    assert [i for i, _ in quarantined] == [5] and 5 not in positions and len(features) == 299
