"""Batch scoring: new data (a table file or a folder of images, no labels) through the champion's shipped model.

    read a chunk → check each row against the model's training data → score the good ones → keep the others
    with the reason (quarantine) → write the chunk's part; at the end, one versioned output:

    <score.output>/<input name>-<input digest[:12]>/<model>-v<version>/
        predictions.parquet   id (row number or file), label, p_<class> per class, model, model_version,
                              variant, input_digest
        quarantine.parquet    id, reason
        summary.json          counts, reasons, drift, class shares, model, input, seconds

The same input with the same model version again is a no-op that says so; a new champion writes a new version
beside the old one. Chunks finished before a kill are kept (in `<version>.partial/`) and not scored again. When
the quarantined share passes `score.max_bad_fraction` the run fails and writes no version.

    model.py   the shipped model (the champion's BentoML model: the ONNX file the Bento serves)
    reader.py  the input a chunk at a time, and its digest
    chunk.py   one chunk checked and scored (runs in this process or on a cluster worker)
    jobs/engine.py  this process, a process per core, or a Dask cluster (shared with sweeps)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from tasks.common.atomic import write_json, write_with
from tasks.common.errors import DataError
from jobs import engine
from jobs.score import reader
from jobs.score.chunk import Limits, Scored, score_chunk
from jobs.score.model import ShippedModel

log = logging.getLogger(__name__)


class TooManyBadRows(DataError):
    """The quarantined share passed `score.max_bad_fraction`: no predictions were written."""


@dataclass
class ScoreResult:
    input: str
    input_digest: str
    model: dict
    output: str
    already_scored: bool = False
    rows: int = 0
    scored: int = 0
    quarantined: int = 0
    bad_fraction: float = 0.0
    reasons: dict = field(default_factory=dict)  # the most frequent quarantine reasons, with counts
    imputed_cells: int = 0
    class_shares: dict = field(default_factory=dict)
    drift: dict = field(default_factory=dict)
    chunks: int = 0
    resumed_chunks: int = 0
    engine: str = "in-process"
    seconds: float = 0.0


PARTS = "arrow-ipc"  # the finished chunks' format (a killed run's Parquet parts, before it, are scored again)
MAX_NAME = 100  # characters of the input's name kept in its output folder's (a 250-character name: ENAMETOOLONG)


def version_dir(root: Path, output: str, input_path: Path, digest: str, model: ShippedModel) -> Path:
    return root / output / f"{input_path.stem[:MAX_NAME]}-{digest[:12]}" / f"{model.name}-v{model.version}"


def _check_shape(input_path: Path, files: list[str], model: ShippedModel) -> None:
    """Arrays are scored as stored (no resizing, as ingest takes them): each file's image shape must be the served
    one (H×W, or H×W×C for colour)."""
    served = tuple(int(d) for d in model.meta["served_shape"])
    for name in files:
        shape = reader.image_array(input_path, name).shape[1:]
        if shape != served and shape + (1,) != served:
            raise DataError(f"{input_path / name}: images of shape {shape}, but model {model.tag} takes {served} "
                            "(arrays are scored as stored: resize them, or give a folder of image files)")


def _resumable(partial: Path, shaped_by: dict) -> None:
    """Keep the chunks a killed run finished only if everything that shaped them (input, model, chunking, checks) is
    what this run uses; otherwise start over, saying why. Chunks are numbered: with another `score.chunk_rows`,
    chunk 3 is other rows, and reusing it would duplicate some rows and drop others."""
    record = partial / "shaped_by.json"
    if partial.is_dir():
        before = json.loads(record.read_text()) if record.is_file() else None
        if before != shaped_by:
            changed = sorted(k for k in shaped_by if (before or {}).get(k) != shaped_by[k]) if before else ["unknown"]
            log.warning("scoring starts over: the finished chunks in %s were made with other %s (%s then, %s now)",
                        partial, ", ".join(changed), {k: (before or {}).get(k) for k in changed},
                        {k: shaped_by.get(k) for k in changed})
            shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    if not record.is_file():
        write_json(record, shaped_by)


def prepare(input_path: Path, root: Path, address: str | None = None) -> None:
    """Start what scoring `input_path` will take before the caller does other work (a command's imports while its
    Prefect server boots): for a folder of more image files than a chunk holds, this machine's worker processes
    (about 0.3 s to start and import; a table with text starts them as its scoring begins, a table without is
    scored in this process: `_worth_spreading`). Never fails: `score` reports any problem with the input or the
    params."""
    from tasks.common.config import load_params
    from tasks.common.errors import PipelineError

    input_path = Path(input_path)
    try:
        if address or not reader.readable(input_path, input_path.parent) and not input_path.is_dir():
            return
        chunk_rows = load_params(Path(root) / "params.yaml").score.chunk_rows
        if reader.input_kind(input_path) == "images":
            engine.expect(score_chunk, address, -(-len(reader.image_files(input_path)) // chunk_rows))
    except (OSError, ValueError, PipelineError):  # pyarrow's errors are ValueErrors and OSErrors
        return


def score(input_path: Path, model: ShippedModel, root: Path, cfg, max_image_pixels: int,
          address: str | None = None, max_text_chars: int = 20_000) -> ScoreResult:
    began = time.monotonic()
    input_path = Path(input_path)
    if not input_path.exists():
        raise DataError(f"{input_path}: no such file or folder")
    if not input_path.is_dir() and not reader.readable(input_path, input_path.parent):
        raise DataError(f"{input_path}: not a regular file (a FIFO, a device, or a link out of its folder): not read")
    kind = reader.input_kind(input_path)
    if ("images" if kind in reader.ARRAY_KINDS else kind) != model.kind:
        raise DataError(f"{input_path} holds {kind}, but model {model.tag} takes {model.kind}")
    if kind == "table":
        _check_columns(input_path, model)
    files = reader.input_files(input_path)  # listed once; image files scored here: as many chunks for every core
    rows = engine.even_chunks(len(files), cfg.chunk_rows) if kind == "images" and not address else cfg.chunk_rows
    if kind in reader.ARRAY_KINDS:
        _check_shape(input_path, files, model)
    elif files:
        engine.expect(score_chunk, address, -(-len(files) // rows))
    digest = reader.digest(input_path, files)
    about = {"name": model.name, "version": model.version, "variant": model.variant, "tag": model.tag}
    target = version_dir(root, cfg.output, input_path, digest, model)
    if (target / "summary.json").is_file():
        done = json.loads((target / "summary.json").read_text())
        log.info("already scored: %s with %s v%s → %s", input_path, model.name, model.version, target)
        return ScoreResult(**{**done, "already_scored": True})
    partial = target.with_name(target.name + ".partial")
    parts = partial / "parts"
    limits = Limits(cfg.range_margin, cfg.max_missing_fraction, max_image_pixels, max_text_chars)
    _resumable(partial, {"input_digest": digest, "model": model.tag, "chunk_rows": rows,
                         "limits": dataclasses.asdict(limits), "parts": PARTS})
    parts.mkdir(parents=True, exist_ok=True)
    finished = {int(p.name.split("-")[1].split(".")[0]) for p in parts.glob("chunk-*.json")}
    todo = (c for c in reader.chunks(input_path, rows, files, int(cfg.max_line_kb * 1024),
                                     by_name=not address) if c.index not in finished)
    constants = {"model": model.name, "model_version": model.version, "variant": model.variant,
                 "input_digest": digest}
    id_name = "file" if kind == "images" else "row"
    placed: dict = {}
    with tqdm(desc="score", unit="chunk", initial=len(finished), disable=None) as progress:
        for scored in engine.run(score_chunk, todo, address, placed=placed, spread=_worth_spreading(kind, model),
                                 alone={"threads": engine.CORES}, model_tag=model.tag,
                                 model_bytes=model.onnx_path.read_bytes(), meta=model.meta, limits=limits):
            _write_part(parts, scored, model.classes, id_name, constants)
            progress.update(1)
    result = _combine(parts, partial, model.classes, id_name, constants)
    result.update(input=str(input_path), input_digest=digest, model=about, output=str(target),
                  resumed_chunks=len(finished), engine=placed.get("engine", "in-process"))
    result["drift"] = _drift(result.pop("statistic_sums"), result["scored"], model, cfg.max_drift_shift)
    _refuse_too_many_bad_rows(result, cfg.max_bad_fraction, partial)
    result["seconds"] = round(time.monotonic() - began, 3)
    shutil.rmtree(parts)
    write_json(partial / "summary.json", result)
    partial.rename(target)  # the version appears whole, or not at all
    log.info("scored %d rows (%d quarantined) with %s v%s → %s", result["rows"], result["quarantined"],
             model.name, model.version, target)
    return ScoreResult(**result)


def _refuse_too_many_bad_rows(result: dict, max_bad_fraction: float, partial: Path) -> None:
    if result["rows"] and result["bad_fraction"] > max_bad_fraction:
        raise TooManyBadRows(
            f"{result['quarantined']} of {result['rows']} rows ({result['bad_fraction']:.1%}) failed the checks; "
            f"the limit is score.max_bad_fraction = {max_bad_fraction:.1%}. Most frequent reasons: "
            + "; ".join(f"{n} × {r}" for r, n in list(result["reasons"].items())[:5])
            + f". No predictions were written (finished chunks are kept in {partial})")


def _worth_spreading(kind: str, model: ShippedModel) -> bool:
    """Whether this machine's chunks are worth a process per core: images (decoding) and tables with text
    (tokenizing, a Transformer) are; a table of numbers and categories is checked and encoded a column at a time,
    and sending its chunks to other processes costs more than scoring them here (100,000 wine rows: 0.68 s on two
    worker processes, 0.60 s in this one)."""
    return kind != "table" or bool(model.meta.get("encoding", {}).get("text"))


def _check_columns(input_path: Path, model: ShippedModel) -> None:
    spec = model.meta["encoding"]
    expected = [c["column"] for part in ("numeric", "categorical", "text") for c in spec.get(part, [])]
    found = set(reader.columns(input_path))
    missing = [c for c in expected if c not in found]
    if missing:
        raise DataError(f"{input_path} lacks the columns {missing} model {model.tag} was trained on "
                        f"(it takes {expected}; other columns are ignored)")


def _schemas(id_name: str, classes: list[str], constants: dict):
    """The predictions' and the quarantine's Arrow schemas (a part's predictions: without the constants)."""
    import pyarrow as pa

    id_type = pa.string() if id_name == "file" else pa.int64()
    scored = [(id_name, id_type), ("label", pa.string()), *[(f"p_{c}", pa.float32()) for c in classes]]
    return (pa.schema([*scored, *[(k, pa.string()) for k in constants]]),
            pa.schema([(id_name, id_type), ("reason", pa.string())]), pa.schema(scored))


def _write_arrow(target: Path, table) -> None:
    """A part as an Arrow IPC file: written and read back at the speed of a copy; the one Parquet encoding is the
    output's, in `_combine` (Parquet parts cost 100,000 wine rows 0.2 s: written, read, written)."""
    import pyarrow as pa

    def write(tmp: Path) -> None:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)

    write_with(target, write)


def _read_arrow(path: Path):
    import pyarrow as pa

    with pa.OSFile(str(path)) as source:  # read into memory: the table outlives the file's handle
        return pa.ipc.open_file(source).read_all()


def _write_part(parts: Path, scored: Scored, classes: list[str], id_name: str, constants: dict) -> None:
    """A chunk's predictions, and its quarantine when it set rows aside, as Arrow IPC; then its counts (.json)."""
    import numpy as np
    import pyarrow as pa

    name = f"chunk-{scored.index:06d}"
    probabilities = scored.probabilities
    predicted = probabilities.argmax(1).astype(np.int32) if len(probabilities) else np.zeros(0, np.int32)
    _, quarantine_schema, schema = _schemas(id_name, classes, constants)
    columns = [pa.array(scored.ids, schema.field(0).type),  # labels built in Arrow, not Python lists
               pa.DictionaryArray.from_arrays(predicted, pa.array(classes, pa.string())).cast(pa.string()),
               *[pa.array(probabilities[:, k], pa.float32()) for k in range(len(classes))]]
    _write_arrow(parts / f"{name}.arrow", pa.Table.from_arrays(columns, schema=schema))
    if scored.quarantined:  # most chunks set nothing aside: no part to write, read and combine
        quarantine = pa.table({id_name: [i for i, _ in scored.quarantined],
                               "reason": [r for _, r in scored.quarantined]}, schema=quarantine_schema)
        _write_arrow(parts / f"{name}.quarantine.arrow", quarantine)
    counts = np.bincount(predicted, minlength=len(classes))
    # last: a chunk counts as finished once its .json is there
    write_json(parts / f"{name}.json", {"scored": len(scored.ids), "quarantined": len(scored.quarantined),
                                        "statistic_sums": scored.statistic_sums, "imputed": scored.imputed,
                                        "labels": {c: int(n) for c, n in zip(classes, counts) if n}})


def _with_constants(table, constants: dict):
    """A part's predictions with the run's constants (model, version, variant, input digest) on every row."""
    import pyarrow as pa

    for key, value in constants.items():
        table = table.append_column(key, pa.repeat(pa.scalar(str(value), pa.string()), table.num_rows))
    return table


def _combine(parts: Path, out: Path, classes: list[str], id_name: str, constants: dict) -> dict:
    """The parts, in chunk order, into predictions.parquet and quarantine.parquet (streamed: one part in memory;
    quarantine.parquet is written, empty, when no chunk set a row aside)."""
    import pyarrow.parquet as pq

    names = sorted(p.name.removesuffix(".json") for p in parts.glob("chunk-*.json"))
    totals = {"scored": 0, "quarantined": 0, "imputed": 0}
    sums: dict[str, float] = {}
    labels: Counter = Counter()
    reasons: Counter = Counter()
    schemas = _schemas(id_name, classes, constants)
    for suffix, target, schema in ((".arrow", "predictions.parquet", schemas[0]),
                                   (".quarantine.arrow", "quarantine.parquet", schemas[1])):
        # dictionary-encoded: the label and the constants, not the probabilities and ids (all but unique: 100,000
        # wine rows' output written in 16 ms instead of 35, and a third smaller)
        repeated = [name for name in ("label", "reason", *constants) if name in schema.names]
        with pq.ParquetWriter(out / f".{target}.tmp", schema, use_dictionary=repeated) as writer:
            for part in (parts / f"{name}{suffix}" for name in names):
                if part.is_file():  # (a chunk with nothing quarantined has no quarantine part)
                    table = _read_arrow(part)
                    if suffix == ".quarantine.arrow":
                        reasons.update(table.column("reason").to_pylist())
                    writer.write_table(table if suffix != ".arrow" else _with_constants(table, constants))
        (out / f".{target}.tmp").replace(out / target)
    for name in names:
        counts = json.loads((parts / f"{name}.json").read_text())
        for key in totals:
            totals[key] += counts[key]
        for statistic, value in counts["statistic_sums"].items():
            sums[statistic] = sums.get(statistic, 0.0) + value
        labels.update(counts["labels"])
    rows = totals["scored"] + totals["quarantined"]
    return {"rows": rows, "scored": totals["scored"], "quarantined": totals["quarantined"],
            "bad_fraction": totals["quarantined"] / rows if rows else 0.0, "imputed_cells": totals["imputed"],
            "reasons": dict(_generalised(reasons).most_common(10)), "chunks": len(names),
            "class_shares": {c: labels.get(c, 0) / totals["scored"] if totals["scored"] else 0.0 for c in classes},
            "statistic_sums": sums}


def _generalised(reasons: Counter) -> Counter:
    """Reasons grouped by their wording without the row's own value (`... [18, 90] (got 250)` → `... [18, 90]`), so
    that the summary counts kinds of problems, not rows."""
    import re

    grouped: Counter = Counter()
    for reason, count in reasons.items():
        grouped[re.sub(r"( \(got .*\)|, got .*)$", "", reason)] += count
    return grouped


def _drift(sums: dict[str, float], scored: int, model: ShippedModel, max_shift: float) -> dict:
    from tasks.shipped.skew import drift_of_means

    expected = model.meta.get("expectations")
    if not scored or not expected or not sums:
        return {}
    return drift_of_means({name: value / scored for name, value in sums.items()}, scored, expected, max_shift)


def predictions_of(result: ScoreResult):
    """The version's predictions as a DataFrame (for tests and notebooks: the whole file, in memory)."""
    import pandas as pd

    return pd.read_parquet(Path(result.output) / "predictions.parquet")

