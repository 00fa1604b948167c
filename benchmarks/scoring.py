"""Batch scoring (jobs/score/): throughput against the bare ONNX Runtime forward, peak memory as the input grows,
and scoring with no address (this process for one chunk, a process per core for more) against a local Dask
cluster.

    python -m benchmarks.scoring        (after `make run`: it scores with the champion's shipped model)

Inputs, written as PNG files the way a team drops scans: the bundled digits (1,797 8×8 images) and the
MNIST-size test set (benchmarks/mnist_size.py, 28×28). Each scoring run is a fresh process (`python -m
benchmarks.scoring --one ...`), so that its peak resident memory is its own. The forward alone is ONNX Runtime
at batch 64 on the same decoded inputs, in one process, one thread (as each scoring process or worker uses).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _write_pngs(images: np.ndarray, folder: Path, copies: int = 1) -> Path:
    """Images (N×H×W in [0, 1]) as 8-bit PNGs, `copies` times over (distinct names), in sub-folders of 1,000."""
    from PIL import Image

    folder.mkdir(parents=True)
    n = 0
    for _ in range(copies):
        for image in images:
            sub = folder / f"{n // 1000:04d}"
            sub.mkdir(exist_ok=True)
            Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).save(sub / f"{n:07d}.png")
            n += 1
    return folder


def _one(input_path: str, out: str, address: str | None) -> None:
    """One scoring run in this process (the child): its result and peak memory as JSON on the last line."""
    from tasks.common.config import load_params
    from jobs.score import score
    from jobs.score.model import champion_model

    params = load_params(ROOT / "params.yaml")
    model = champion_model(ROOT, params)
    began = time.perf_counter()
    result = score(Path(input_path), model, Path(out), params.score.model_copy(update={"output": "out"}),
                   params.package.max_image_pixels, address)
    seconds = time.perf_counter() - began
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rows": result.rows, "scored": result.scored, "seconds": seconds, "peak_mb": peak_mb,
                      "engine": result.engine, "worker_peak_mb": _workers_peak_mb()}))


def _workers_peak_mb() -> float:
    """The largest peak resident memory among this process's worker processes (this machine's engine), 0 if none."""
    import psutil

    peaks = [0.0]
    for child in psutil.Process().children(recursive=True):
        try:
            status = Path(f"/proc/{child.pid}/status").read_text()
        except OSError:
            continue
        peaks += [int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmHWM:")]
    return max(peaks)


def _run(input_path: Path, address: str | None = None) -> dict:
    out = Path(tempfile.mkdtemp(prefix="bench-score-out-"))
    try:
        done = subprocess.run([sys.executable, "-m", "benchmarks.scoring", "--one", str(input_path), str(out),
                               *(["--address", address] if address else [])], cwd=ROOT, capture_output=True,
                              text=True, timeout=3600)
        if done.returncode != 0:
            raise SystemExit(done.stderr[-3000:])
        found = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(out, ignore_errors=True)
    found["rows_per_s"] = found["rows"] / found["seconds"]
    return found


def _forward(images: np.ndarray, served: tuple[int, ...], pixel_max: float, onnx_path: Path) -> float:
    """Rows/s of the bare forward at batch 64 on the inputs as scoring decodes them (one thread)."""
    import io

    import onnxruntime as ort
    from PIL import Image

    from tasks.shipped.imaging import decode_image

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    decoded = []
    for image in images[:4096]:
        buffer = io.BytesIO()
        Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).save(buffer, format="PNG")
        decoded.append(decode_image(buffer.getvalue(), served[:2]) * (pixel_max / 255))
    batch = np.asarray(decoded, np.float32)
    began, rows = time.perf_counter(), 0
    while time.perf_counter() - began < 3:
        for start in range(0, len(batch), 64):
            session.run(None, {"images": batch[start:start + 64]})
        rows += len(batch)
    return rows / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--one", nargs=2, metavar=("INPUT", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return _one(*args.one, args.address)
    from sklearn.datasets import load_digits

    from benchmarks import mnist_size
    from benchmarks.record import save, table
    from tasks.common.config import load_params
    from jobs.engine import CORES
    from jobs.score.model import champion_model

    model = champion_model(ROOT, load_params(ROOT / "params.yaml"))
    sets = {"digits": load_digits().images / 16.0,
            "MNIST-size": mnist_size.build(sizes={"train": 1, "val": 1, "test": 10_000})["test"].x[:, 0]}
    work = Path(tempfile.mkdtemp(prefix="bench-score-"))
    rows, figures = [], {}
    try:
        for name, images in sets.items():
            folder = _write_pngs(images, work / name)
            forward = _forward(images, model.served_shape, float(model.meta["pixel_max"]), model.onnx_path)
            here = _run(folder)
            there = _run(folder, "local")
            figures[name] = {"forward_rows_per_s": forward, "no_address": here, "local_cluster": there}
            for where, found in ((f"no address ({here['engine']})", here), ("local Dask cluster", there)):
                rows.append([name, where, found["rows"], found["rows_per_s"], forward,
                             found["rows_per_s"] / forward, found["peak_mb"],
                             found["worker_peak_mb"] if "local processes" in found["engine"] else ""])
            print(name, figures[name], flush=True)
        tenfold = _write_pngs(sets["MNIST-size"], work / "MNIST-size x10", copies=10)
        figures["memory"] = {"1x": figures["MNIST-size"]["no_address"], "10x": _run(tenfold)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    one, ten = figures["memory"]["1x"], figures["memory"]["10x"]
    best = {name: max(f["no_address"]["rows_per_s"], f["local_cluster"]["rows_per_s"]) / f["forward_rows_per_s"]
            for name, f in figures.items() if name != "memory"}
    goals = [[f"{name}: scoring ≥ 80 % of the bare forward at batch 64", f"{share:.0%}", share >= 0.8]
             for name, share in best.items()]
    total = {k: f["peak_mb"] + CORES * f["worker_peak_mb"] for k, f in (("1x", one), ("10x", ten))}
    goals.append(["peak memory (driver + its workers) at 10× the input within 1.2× of 1×",
                  f"{total['10x']:.0f} vs {total['1x']:.0f} MB ({total['10x'] / total['1x']:.2f}×)",
                  total["10x"] <= 1.2 * total["1x"]])
    figures["goals"] = {g: ok for g, _, ok in goals}
    markdown = "\n\n".join([
        f"Model: the champion's shipped model `{model.tag}` ({model.variant}, served shape {model.served_shape}). "
        "Inputs are PNG files; scoring reads, decodes and resizes each as the Bento does, checks it, scores chunks of "
        "`score.chunk_rows` and writes Parquet. The forward alone is ONNX Runtime at batch 64 on the already decoded "
        "inputs, one thread. The local Dask cluster is started by the run (a scheduler and two single-threaded "
        "worker processes), its start-up included.",
        table(["input", "where", "rows", "rows/s", "forward rows/s", "share of the forward", "peak MB (driver)",
               "peak MB (a worker of this machine)"], rows),
        f"Peak memory of a run with no address: {one['rows']:,} images {one['peak_mb']:.0f} MB (its workers "
        f"{one['worker_peak_mb']:.0f} MB); {ten['rows']:,} images (10×) {ten['peak_mb']:.0f} MB (workers "
        f"{ten['worker_peak_mb']:.0f} MB).",
        table(["goal (issue 20)", "measured", "met"], [[g, m, "yes" if ok else "**no**"] for g, m, ok in goals]),
    ])
    save("scoring", title="Batch scoring", command="python -m benchmarks.scoring", markdown=markdown, figures=figures)
    print(markdown)


if __name__ == "__main__":
    main()
