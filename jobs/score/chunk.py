"""One chunk of new data: each row (or image) checked against what the model was trained on, the good ones scored
with the shipped ONNX model, the others kept with the reason. Runs where the engine puts it (this process or a
cluster worker): it needs only the chunk, the model's bytes and metadata, and the checks' limits.

Preprocessing is the Bento's own (tasks/shipped/): table rows encoded by `rows.encode_rows`, images decoded and
resized by `imaging.decode_image`, statistics from `skew.statistics`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from jobs.score.reader import ImageFiles
from tasks.shipped.imaging import NotAnImage, decode_image
from tasks.shipped.rows import MAX_ENCODED, BadRow, encode_frame, encode_numbers, encode_rows
from tasks.shipped.skew import statistics
from tasks.shipped.text import takes_any_length, text_layout, trimmed

_SESSIONS: dict[tuple[str, int], object] = {}  # one ONNX Runtime session per model and thread count, per process


@dataclass(frozen=True)
class Limits:
    range_margin: float  # training std devs beyond the training min/max
    max_missing_fraction: float
    max_image_pixels: int
    max_text_chars: int = 20_000  # a longer text is set aside (the service refuses it too: package.max_text_chars)


@dataclass
class Scored:
    index: int
    ids: list
    probabilities: np.ndarray  # N×K, float32
    quarantined: list[tuple[object, str]]  # (id, reason)
    statistic_sums: dict[str, float] = field(default_factory=dict)  # for drift: the sum of each statistic
    imputed: int = 0  # table cells missing and filled as in training


def score_chunk(chunk, model_tag: str, model_bytes: bytes, meta: dict, limits: Limits, threads: int = 1) -> Scored:
    """`threads`: ONNX Runtime's, for the forward (1 where the engine runs a chunk per core side by side)."""
    if meta.get("kind", "images") == "table":
        positions, inputs, quarantined, imputed = _table_inputs(chunk, meta, limits)
    elif isinstance(chunk.data, np.ndarray):  # images.npy or IDX rows
        positions, inputs, quarantined, imputed = _array_inputs(chunk, meta)
    else:
        positions, inputs, quarantined, imputed = _image_inputs(chunk, meta, limits)
    classes, session = len(meta["classes"]), _session(model_tag, model_bytes, threads)
    probabilities = _forward(session, inputs, meta) if len(inputs) else np.zeros((0, classes), np.float32)
    found = statistics(inputs, meta.get("kind", "images"), (meta.get("expectations") or {}).get("text")) \
        if len(inputs) else {}
    ids = chunk.ids if len(positions) == len(chunk.ids) else [chunk.ids[p] for p in positions]  # (all, in order)
    return Scored(chunk.index, ids, probabilities, quarantined,
                  {name: float(values.sum()) for name, values in found.items()}, imputed)


TEXT_ROWS = 256  # rows a text model reads at a time: a Transformer's activations grow with rows × length², and
# ONNX Runtime keeps its peak allocated (a whole 4,096-row chunk of tickets grew a worker by over 300 MB, and loky
# restarted it as leaking); each slice is also cut after its own last token


def _forward(session, inputs: np.ndarray, meta: dict) -> np.ndarray:
    """The model's probabilities for the encoded rows: at once, or a text model's TEXT_ROWS at a time, each slice cut
    after its last token when the model was exported with a dynamic sequence length (as the service does)."""
    layout = text_layout(meta["encoding"], inputs.shape[1]) if meta.get("kind") == "table" else None
    if layout is None:
        return session.run(None, {"images": inputs})[0].astype(np.float32)
    cut = trimmed if takes_any_length(session) else (lambda rows, _: rows)
    return np.concatenate([session.run(None, {"images": cut(inputs[start:start + TEXT_ROWS], layout)})[0]
                           for start in range(0, len(inputs), TEXT_ROWS)]).astype(np.float32)


def _session(tag: str, model_bytes: bytes, threads: int = 1):
    import onnxruntime as ort

    if (tag, threads) not in _SESSIONS:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        _SESSIONS[tag, threads] = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    return _SESSIONS[tag, threads]


def _bounds(meta: dict, name: str, margin: float) -> tuple[float, float] | None:
    found = (meta.get("expectations") or {}).get("statistics", {}).get(name)
    if not found:
        return None
    return found["min"] - margin * found["std"], found["max"] + margin * found["std"]


def _table_inputs(chunk, meta: dict, limits: Limits):
    """Raw rows → encoded features of the rows that pass; a reason for each that does not. The rows that pass every
    check on their columns as arrays (`_plain_rows`) are encoded at once (`encode_frame`, equal to `encode_rows`);
    the others one at a time (`_one_row`), which names their problem or, for a value the arrays could not judge
    (a number held as text, say), lets them pass."""
    spec = meta["encoding"]
    fast = _number_inputs(chunk, meta, limits)
    if fast is not None:
        return fast
    expected = [c["column"] for part in ("numeric", "categorical", "text") for c in spec.get(part, [])]
    frame = chunk.data if list(chunk.data.columns) == expected else chunk.data[expected]
    plain, numbers, missing = _plain_rows(frame, meta, limits)
    passed = numbers if plain.all() else numbers[plain]
    imputed = int(missing[plain].sum())
    quarantined, others, encoded = [], [], []
    rest = np.flatnonzero(~plain)
    records = frame.iloc[rest].to_dict("records") if len(rest) else []  # (2 ms a chunk even when empty)
    for position, row in zip(rest, records):  # Python values (an int64 cell: an int)
        one, reason, missing = _one_row(row, spec, meta, limits)
        if reason:
            quarantined.append((chunk.ids[position], reason))
        else:
            others.append(position)
            encoded.append(one)
            imputed += missing
    positions = np.concatenate([np.flatnonzero(plain), np.asarray(others, np.int64)])
    order = np.argsort(positions, kind="stable")
    width = int(meta["served_shape"][0])
    features = np.concatenate([encode_frame(passed, spec), np.asarray(encoded, np.float32).reshape(-1, width)])
    return positions[order].tolist(), features[order], quarantined, imputed


def _number_inputs(chunk, meta: dict, limits: Limits):
    """`_table_inputs` of a chunk stored as numbers only, for a model that reads numbers only, when every row passes:
    the chunk as one array, checked and encoded at once (pandas' column selection cost 2 ms a 4,096-row chunk, as
    much as the forward). None otherwise: the general path names each problem."""
    spec = meta["encoding"]
    columns = list(chunk.data.columns)
    names = [c["column"] for c in spec["numeric"]]
    if spec["categorical"] or spec.get("text") or len(set(columns)) != len(columns) or not set(names) <= set(columns) \
            or not all(_numeric(dtype) for dtype in chunk.data.dtypes):
        return None
    values = chunk.data.to_numpy(np.float64, na_value=np.nan)[:, [columns.index(name) for name in names]]
    missing = np.isnan(values).sum(axis=1)
    if not ((missing <= limits.max_missing_fraction * len(names)).all()
            and _numbers_fine(values, meta, limits.range_margin).all()):
        return None
    return list(range(len(values))), encode_numbers(values, spec["numeric"]), [], int(missing.sum())


def _plain_rows(frame, meta: dict, limits: Limits):
    """Which rows pass every check, judged a column at a time: few enough missing cells; numbers finite and within
    the training range widened by `range_margin` std devs; categories text, numbers or booleans; texts non-empty
    strings within `max_text_chars`. A row this cannot vouch for is not plain (`_one_row` judges it). And the frame
    with its numeric columns as numbers (a CSV column with one bad cell is read as text throughout: its other cells
    read as `_one_row` reads them); and each row's missing cells."""
    import pandas as pd

    spec = meta["encoding"]
    missing = frame.isna().sum(axis=1).to_numpy()
    plain = missing <= limits.max_missing_fraction * frame.shape[1]
    numbers, columns = frame.copy(deep=False), []
    for column in spec["numeric"]:
        series = frame[column["column"]]
        if _numeric(series.dtype):
            values = series.to_numpy(np.float64, na_value=np.nan)
        else:
            values, readable = _as_numbers(series)
            plain &= readable
            numbers[column["column"]] = values
        columns.append(values)
    if columns:
        plain &= _numbers_fine(np.column_stack(columns), meta, limits.range_margin)
    for column in spec["categorical"]:
        series = frame[column["column"]]
        if not pd.api.types.is_numeric_dtype(series) and not isinstance(series.dtype, pd.StringDtype):
            plain &= np.array([m or isinstance(v, (str, int, float)) for v, m in _cells(series)], bool)
    for column in spec.get("text", []):
        cells = [v if not m and isinstance(v, str) else "" for v, m in _cells(frame[column["column"]])]
        plain &= np.array([0 < len(v) <= limits.max_text_chars and not v.isspace() for v in cells], bool)
        plain &= _encodable(cells)
    return plain, numbers, missing


def _numeric(dtype) -> bool:
    """Whether a column of this dtype holds numbers as encode_rows reads them (not booleans, not complex)."""
    import pandas as pd

    return pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype) \
        and not pd.api.types.is_complex_dtype(dtype)


def _numbers_fine(values: np.ndarray, meta: dict, margin: float) -> np.ndarray:
    """Rows whose numbers (N × numeric columns) are each missing, or finite, within MAX_ENCODED and within the
    training range widened by `margin` std devs, compared as encode_rows stores them (float32), as _out_of_range
    does. All columns at once: a chunk of a wide table is a few array operations, not a few per column."""
    numeric = meta["encoding"]["numeric"]
    encoded = (values - [c["mean"] for c in numeric]) / [c["scale"] for c in numeric]
    fine = np.isfinite(values) & (np.abs(encoded) <= MAX_ENCODED)
    bounds = [_bounds(meta, f"feature_{j}", margin) or (-np.inf, np.inf) for j in range(len(numeric))]
    stored = encoded.astype(np.float32)
    fine &= (np.array([b[0] for b in bounds], np.float32) <= stored) & (stored <= np.array([b[1] for b in bounds],
                                                                                          np.float32))
    return (np.isnan(values) | fine).all(axis=1)


def _cells(series) -> list[tuple[object, bool]]:
    return list(zip(series.tolist(), series.isna().tolist()))


def _as_numbers(series) -> tuple[np.ndarray, np.ndarray]:
    """A numeric column held as text or objects, cell by cell as `_one_row` reads it (`_number`): the values (NaN
    where missing or unreadable), and which cells are missing or a number `encode_rows` takes as it is (a float, or
    an int a float holds exactly; not "nan", which `_one_row` imputes without counting it); the others are left
    to `_one_row`, which names them or lets them pass."""
    values, readable = np.full(len(series), np.nan), np.zeros(len(series), bool)
    for i, (cell, missing) in enumerate(_cells(series)):
        value = None if missing else _number(cell)
        number = isinstance(value, float) and value == value or type(value) is int and abs(value) <= 2**53
        if value is None or number:
            readable[i] = True
            values[i] = np.nan if value is None else value
    return values, readable


def _encodable(texts: list[str]) -> bool:
    """Whether every text is Unicode a tokenizer can take (a lone surrogate is not)."""
    try:
        "".join(texts).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _one_row(row: dict, spec: dict, meta: dict, limits: Limits) -> tuple[np.ndarray | None, str, int]:
    """One row checked and encoded as the service would: its encoding, or the reason it is set aside; and how many
    of its cells were missing (imputed when it passes)."""
    numeric, text = [c["column"] for c in spec["numeric"]], [c["column"] for c in spec.get("text", [])]
    row = {k: None if _missing(v) else _number(v) if k in numeric else str(v) if k in text else v
           for k, v in row.items()}  # a text of digits, read by pandas as a number, is still text
    missing = sum(v is None for v in row.values())
    if missing > limits.max_missing_fraction * len(row):
        return None, f"{missing} of {len(row)} columns missing (at most {limits.max_missing_fraction:.0%} may be)", 0
    reason = _text_reason(row, text, limits.max_text_chars)
    if reason:
        return None, reason, 0
    try:
        encoded = encode_rows([row], spec)[0]
    except BadRow as err:
        return None, str(err).removeprefix("row 0, ").removeprefix("row 0: "), 0
    reason = _out_of_range(row, encoded, spec, meta, limits.range_margin)
    return (None, reason, 0) if reason else (encoded, "", missing)


def _text_reason(row: dict, text: list[str], max_chars: int) -> str:
    """Why a row's text is set aside: missing or empty (a model reading text has nothing to go on; not guessed from
    the other columns), or longer than the service would take."""
    for column in text:
        value = row[column]
        if value is None or not str(value).strip():
            return f"column '{column}': {'no text' if value is None else 'an empty text'}"
        if len(str(value)) > max_chars:
            return f"column '{column}': {len(str(value)):,} characters, over package.max_text_chars ({max_chars:,})"
    return ""


def _out_of_range(row: dict, encoded: np.ndarray, spec: dict, meta: dict, margin: float) -> str:
    for j, column in enumerate(spec["numeric"]):
        bounds = _bounds(meta, f"feature_{j}", margin)
        if bounds is None or row[column["column"]] is None or bounds[0] <= encoded[j] <= bounds[1]:
            continue
        low, high = (b * column["scale"] + column["mean"] for b in bounds)
        return (f"column '{column['column']}': outside the training range widened by {margin:g} std devs "
                f"[{low:.6g}, {high:.6g}] (got {row[column['column']]})")
    return ""


def _array_inputs(chunk, meta: dict):
    """Stored intensities (images.npy, IDX) → the served inputs of the images that pass: finite, within the model's
    scale [0, pixel_max], not constant; a reason for each that does not."""
    shape = tuple(int(d) for d in meta["served_shape"])
    pixel_max = float(meta["pixel_max"])
    positions, images, quarantined = [], [], []
    for position, image in enumerate(np.asarray(chunk.data, np.float64).reshape(len(chunk.data), *shape)):
        low, high = (float(image.min()), float(image.max())) if np.isfinite(image).all() else (None, None)
        if low is None:
            quarantined.append((chunk.ids[position], "NaN or infinite intensities"))
        elif low < 0 or high > pixel_max:
            quarantined.append((chunk.ids[position], f"intensities outside the model's scale [0, {pixel_max:g}] "
                                                     f"(got {low:g} to {high:g})"))
        elif high == low:
            quarantined.append((chunk.ids[position], f"a constant image (got every pixel {low:g})"))
        else:
            positions.append(position)
            images.append(image)
    return positions, np.asarray(images, np.float32).reshape(-1, *shape), quarantined, 0


def _image_inputs(chunk, meta: dict, limits: Limits):
    """Image files → the served inputs (H×W[×C] intensities in the model's scale) of those that pass: readable PNG or
    JPEG within the pixel budget, not constant. Decoding converts channels and size as the Bento does, so the
    intensities always lie in range; how far their statistics moved is the drift report's job."""
    shape = tuple(int(d) for d in meta["served_shape"])
    channels = shape[2] if len(shape) == 3 else 1
    scale = float(meta["pixel_max"]) / 255.0
    positions, images, quarantined = [], [], []
    contents = chunk.data.read() if isinstance(chunk.data, ImageFiles) else chunk.data
    for position, content in enumerate(contents):
        try:
            pixels = decode_image(content, shape[:2], channels, limits.max_image_pixels) * scale
        except NotAnImage as err:
            quarantined.append((chunk.ids[position], str(err)))
            continue
        if float(pixels.max()) == float(pixels.min()):  # as validate refuses constant images in training data
            # (not std() == 0: the std of 64 equal floats such as 104 × 16/255 comes out as 9e-16, not 0)
            quarantined.append((chunk.ids[position], f"a constant image (got every pixel {float(pixels.flat[0]):g})"))
            continue
        positions.append(position)
        images.append(pixels)
    return positions, np.asarray(images, np.float32).reshape(-1, *shape), quarantined, 0


def _number(value):
    """A numeric column's value as a number where it reads as one: a CSV column with one bad cell is read as text
    throughout, and its other cells are still numbers."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value  # encode_rows names it
    return value


def _missing(value) -> bool:
    import pandas as pd

    return value is None or (not isinstance(value, (list, dict, tuple)) and bool(pd.isna(value)))
