"""A command's fixed cost, and its work against the work's real limit (`python -m benchmarks.fixed_cost`).

In a fresh copy of the project trained by `mlops run --no-push` (bundled digits), `mlops score --no-push` as a
user types it (a new process, its Prefect server, MLflow run and DVC tracking included) on folders of 64 PNG
digits, `--repeats` times each (each run's folder holds one image of its own, so none is "already scored"; medians
compared): as the first command, which starts the project's Prefect server and keeps it (flows/kept_server.py;
stopped again after each such run); as a later command, the kept server running with its warm host (its imports
done, as minutes after the first); and with a server of the command's own (`PIPELINE_SERVER_IDLE_MINUTES=0`).
Then 20,000 PNGs, in turn with 64, the kept server running. The work's limit is a bare loop over the same 20,000
files: decoding with Pillow (the Bento's decoder) on all cores and the same ONNX model at batch 64 in one process.
Goals (issue 35): 64 inputs end to end ≤ 3 s; the command's work (20,000 − 64 inputs) ≥ 80 % of the bare loop's
speed. The command scores a folder of several chunks on a process per core (jobs/engine.py). The same for a table:
a second project trained on scikit-learn's wine table, `mlops score` of 64 rows and of 100,000, against pandas
reading the file, NumPy encoding it and the same ONNX Runtime loop.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks.orchestration import _env, _timed, wait_warm
from benchmarks.record import save, table
from tests.support.processes import MLOPS, project_copy, stop_kept_server

GOAL_64_S = 3.0
GOAL_SHARE = 0.8


def _pngs(folder: Path, count: int, salt: int) -> Path:
    """`count` digits as 8-bit PNGs (the bundled set, repeated), one of them shifted by `salt` so that no two
    folders have the same content."""
    from PIL import Image
    from sklearn.datasets import load_digits

    images = (load_digits().images / 16 * 255).astype(np.uint8)
    folder.mkdir(parents=True)
    for n in range(count):
        image = images[n % len(images)] if n else np.roll(images[0], salt % 8, axis=1)
        Image.fromarray(image).save(folder / f"{n:06d}.png")
    return folder


def _decode(paths: list[str], shape: tuple[int, int], scale: float) -> np.ndarray:
    from tasks.shipped.imaging import decode_image

    return np.stack([decode_image(Path(p).read_bytes(), shape) * scale for p in paths]).astype(np.float32)


def _bare(folder: Path, onnx_path: Path, shape: tuple[int, int], scale: float, cores: int = 0) -> float:
    """Seconds for the bare loop: Pillow on `cores` processes (0: every core), then ONNX Runtime at batch 64."""
    import onnxruntime as ort

    paths = sorted(str(p) for p in folder.iterdir())
    began = time.perf_counter()
    cores = cores or os.cpu_count() or 1
    if cores == 1:
        parts = [_decode(paths, shape, scale)]
    else:
        with ProcessPoolExecutor(cores) as pool:
            parts = list(pool.map(_decode, [paths[i::cores] for i in range(cores)], [shape] * cores, [scale] * cores))
    batch = np.concatenate(parts)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    for start in range(0, len(batch), 64):
        session.run(None, {"images": batch[start:start + 64]})
    return time.perf_counter() - began


def _score(root: Path, env: dict, folder: Path) -> float:
    seconds, out = _timed([MLOPS, "score", "--input", str(folder), "--no-push"], root, env)
    assert "already scored" not in out, out[-2000:]
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fixed-cost-") as tmp:
        root = project_copy(Path(tmp) / "project")
        env = _env(Path(tmp) / "homes")
        try:
            figures = _images(root, env, Path(tmp), args.repeats)
        finally:
            stop_kept_server(root)
        figures["table"] = _tables(Path(tmp), args.repeats)
    print(figures)
    save("fixed_cost", title="A command's fixed cost: scoring 64 inputs and 20,000",
         command=f"python -m benchmarks.fixed_cost --repeats {args.repeats}", markdown=_markdown(figures),
         figures=figures)


def _images(root: Path, env: dict, tmp: Path, repeats: int) -> dict:
    _timed([MLOPS, "run", "--no-push"], root, env)
    stop_kept_server(root)
    salt = iter(range(1, 1000))
    first, own = [], []
    for i in range(repeats):  # in turn, so that the machine's drift falls on both
        first.append(_score(root, env, _pngs(tmp / f"first64-{i}", 64, next(salt))))
        stop_kept_server(root)
        own_env = {**env, "PIPELINE_SERVER_IDLE_MINUTES": "0"}
        own.append(_score(root, own_env, _pngs(tmp / f"own64-{i}", 64, next(salt))))
    _score(root, env, _pngs(tmp / "start", 64, next(salt)))  # starts the kept server again
    wait_warm(root)
    small, large = [], []
    for i in range(repeats):
        small.append(_score(root, env, _pngs(tmp / f"in64-{i}", 64, next(salt))))
        large_in = _pngs(tmp / f"in20000-{i}", 20_000, next(salt))
        large.append(_score(root, env, large_in))
    return _figures(small, large, first, own, _limit(root, env, large_in))


def _champion(root: Path, env: dict) -> tuple[str, dict]:
    """The champion's shipped ONNX file and its metadata, as the project's own commands find them."""
    import json
    import sys

    code = ("import json; from pathlib import Path; from tasks.common.config import load_params\n"
            "from jobs.score.model import champion_model\n"
            "m = champion_model(Path('.'), load_params(Path('params.yaml')))\n"
            "print(json.dumps([str(m.onnx_path), m.meta]))")
    done = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, check=True)
    onnx_path, meta = json.loads(done.stdout.strip().splitlines()[-1])
    return onnx_path, meta


def _limit(root: Path, env: dict, folder: Path) -> dict:
    """The bare loop on the champion's shipped model, as stored by the run (64 inputs and 20,000)."""
    onnx_path, meta = _champion(root, env)
    shape, scale = tuple(int(d) for d in meta["served_shape"][:2]), float(meta["pixel_max"]) / 255
    small = Path(tempfile.mkdtemp(prefix="bare64-"))
    try:
        for p in sorted(folder.iterdir())[:64]:
            shutil.copy(p, small / p.name)
        return {"bare_64_s": _bare(small, Path(onnx_path), tuple(shape), scale),
                "bare_20000_s": _bare(folder, Path(onnx_path), tuple(shape), scale),
                "bare_20000_one_core_s": _bare(folder, Path(onnx_path), tuple(shape), scale, cores=1)}
    finally:
        shutil.rmtree(small)


TABLE_ROWS = 100_000


def _wine(path: Path, rows: int, salt: int) -> Path:
    """scikit-learn's wine table (13 numbers a row), repeated to `rows` rows, one cell moved by `salt`."""
    from sklearn.datasets import load_wine

    frame = load_wine(as_frame=True).frame
    frame = frame.iloc[np.arange(rows) % len(frame)].reset_index(drop=True)
    frame.loc[0, "alcohol"] += salt / 1000
    frame.to_csv(path, index=False)
    return path


def _tables(tmp: Path, repeats: int) -> dict:
    """The same commands on a table: a project trained on the wine table, `mlops score` of 64 rows and of
    TABLE_ROWS, in turn, against a bare loop (pandas reads the file, NumPy encodes it, ONNX Runtime at batch 64)."""
    root = project_copy(tmp / "table-project")
    env = _env(tmp / "table-homes")
    _wine(root / "data" / "sources" / "wine.csv", 178, 0)
    small, large = [], []
    try:
        _timed([MLOPS, "run", "--no-push", "--data", "data/sources/wine.csv", "--label", "target"], root, env)
        wait_warm(root)  # the kept server, as for the images
        for i in range(repeats):
            small.append(_score(root, env, _wine(tmp / f"rows64-{i}.csv", 64, 2 * i + 1)))
            large.append(_score(root, env, _wine(tmp / f"rows-{i}.csv", TABLE_ROWS, 2 * i + 2)))
    finally:
        stop_kept_server(root)
    bare = {rows: _bare_table(root, env, _wine(tmp / f"bare-{rows}.csv", rows, 0)) for rows in (64, TABLE_ROWS)}
    work = statistics.median(large) - statistics.median(small)
    return {"score_64_s": small, "score_large_s": large, "rows": TABLE_ROWS, "work_s": work,
            "bare_64_s": bare[64], "bare_large_s": bare[TABLE_ROWS],
            "work_share_of_limit": (bare[TABLE_ROWS] - bare[64]) / work}


def _bare_table(root: Path, env: dict, path: Path) -> float:
    """Seconds for the bare loop on a table file with the project's champion (numeric columns only, as wine's)."""
    import onnxruntime as ort
    import pandas as pd

    onnx_path, meta = _champion(root, env)
    spec = meta["encoding"]
    assert not spec["categorical"] and not spec.get("text"), "the bare table loop encodes numbers only"
    numeric = spec["numeric"]
    began = time.perf_counter()
    values = pd.read_csv(path)[[c["column"] for c in numeric]].to_numpy(np.float64)
    values = np.where(np.isnan(values), [c["fill"] for c in numeric], values)
    rows = ((values - [c["mean"] for c in numeric]) / [c["scale"] for c in numeric]).astype(np.float32)
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    for start in range(0, len(rows), 64):
        session.run(None, {"images": rows[start:start + 64]})
    return time.perf_counter() - began


def _figures(small: list[float], large: list[float], first: list[float], own: list[float], limit: dict) -> dict:
    fixed = statistics.median(small)
    work = statistics.median(large) - fixed
    return {"score_64_s": small, "score_64_median_s": fixed, "score_20000_s": large,
            "score_20000_median_s": statistics.median(large),
            "score_64_first_s": first, "score_64_first_median_s": statistics.median(first),
            "score_64_own_server_s": own, "score_64_own_server_median_s": statistics.median(own),
            "work_20000_s": work, **limit, "work_share_of_limit": (limit["bare_20000_s"] - limit["bare_64_s"]) / work,
            "goal_64_s": GOAL_64_S, "goal_share": GOAL_SHARE}


def _markdown(f: dict) -> str:
    def small(key: str, what: str) -> list:
        median = f[f"{key}_median_s"]
        return [what, f"{median:.2f}", ", ".join(f"{s:.2f}" for s in f[f"{key}_s"]),
                f"goal ≤ {GOAL_64_S:g} s: " + ("met" if median <= GOAL_64_S else "**not met**")]

    rows = [small("score_64", "`mlops score` on 64 PNGs, the project's Prefect server kept from an earlier command "
                              "(run by its warm host)"),
            small("score_64_first", "`mlops score` on 64 PNGs as the first command (it starts the project's server)"),
            small("score_64_own_server", "`mlops score` on 64 PNGs, a server of its own "
                                         "(`PIPELINE_SERVER_IDLE_MINUTES=0`)"),
            ["`mlops score` on 20,000 PNGs", f"{f['score_20000_median_s']:.2f}",
             ", ".join(f"{s:.2f}" for s in f["score_20000_s"]), ""],
            ["its work (20,000 − 64 inputs, medians)", f"{f['work_20000_s']:.2f}", "", ""],
            ["bare loop, 64 / 20,000 files (Pillow on all cores + ONNX b64)",
             f"{f['bare_64_s']:.2f} / {f['bare_20000_s']:.2f}", "", ""],
            ["bare loop on one core, 20,000 files",
             f"{f['bare_20000_one_core_s']:.2f}", "", ""],
            ["the command's work against the bare loop (speed)", f"{f['work_share_of_limit']:.1%}", "",
             f"goal ≥ {GOAL_SHARE:.0%}: " + ("met" if f["work_share_of_limit"] >= GOAL_SHARE else "**not met**")]]
    t = f["table"]
    rows += [[f"`mlops score` on a table, 64 rows / {t['rows']:,} rows (wine's 13 numbers, a project trained on it)",
              f"{statistics.median(t['score_64_s']):.2f} / {statistics.median(t['score_large_s']):.2f}",
              " / ".join(", ".join(f"{s:.2f}" for s in t[k]) for k in ("score_64_s", "score_large_s")),
              ""],
             [f"bare table loop, 64 / {t['rows']:,} rows (pandas, NumPy encoding, ONNX b64)",
              f"{t['bare_64_s']:.2f} / {t['bare_large_s']:.2f}", "", ""],
             ["the command's work on the table against the bare loop (speed)", f"{t['work_share_of_limit']:.1%}", "",
              f"goal ≥ {GOAL_SHARE:.0%}: " + ("met" if t["work_share_of_limit"] >= GOAL_SHARE else "**not met**")]]
    return "\n".join([__doc__.split("\n\n", 1)[1].strip().replace("\n", " "), "",
                      table(["what", "seconds", "each run", ""], rows)])


if __name__ == "__main__":
    main()
