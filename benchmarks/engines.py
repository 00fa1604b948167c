"""Ray against Dask for batch scoring (issue 20 chose the engine by this): install weight, start-up of a local
cluster (a scheduler or head and two worker processes), and throughput on the scoring job's shape of work
(chunks of inputs through the pipeline's ONNX model), each against the same chunks scored in this process.

Run in a virtual environment holding one engine (plus numpy, onnxruntime), from the project root:

    python -m benchmarks.engines ray  --venv /tmp/venv-ray --base /tmp/venv-base    (pip install ray numpy onnxruntime)
    python -m benchmarks.engines dask --venv /tmp/venv-dask --base /tmp/venv-base    (pip install distributed numpy onnxruntime)

`--venv` is measured for its size against a venv of the same interpreter holding only numpy and onnxruntime
(`--base`). Each run writes benchmarks/results/engines/<name>.json; `python -m benchmarks.engines report` (in the
project's venv) puts both side by side in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "artifacts/compress/model.onnx"
CHUNKS, ROWS = 32, 8192  # the job: 32 chunks of 8,192 inputs


def _predictor():
    """A process-wide ONNX Runtime session (one thread: the engine parallelises over processes)."""
    import onnxruntime as ort

    global _SESSION
    if "_SESSION" not in globals():
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        _SESSION = ort.InferenceSession(str(MODEL), options, providers=["CPUExecutionProvider"])
    return _SESSION


def score_chunk(seed: int) -> float:
    """One chunk of the job: its inputs made from `seed` (as a reader would load them), scored; a checksum back."""
    session = _predictor()
    shape = [d if isinstance(d, int) else ROWS for d in session.get_inputs()[0].shape]
    inputs = np.random.default_rng(seed).random(shape, dtype=np.float32)
    return float(session.run(None, {session.get_inputs()[0].name: inputs})[0].sum())


def _size_mb(venv: Path) -> float:
    done = subprocess.run(["du", "-sm", str(venv)], capture_output=True, text=True, check=True)
    return float(done.stdout.split()[0])


def _ray() -> dict:
    began = time.perf_counter()
    import ray
    imported = time.perf_counter() - began
    began = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    from benchmarks.engines import score_chunk as by_name  # pickled by reference, not as __main__'s by value

    remote = ray.remote(num_cpus=1)(by_name)
    ray.get([remote.remote(10_000 + i) for i in range(2)])  # both workers up, the model loaded
    started = time.perf_counter() - began
    began = time.perf_counter()
    results = ray.get([remote.remote(i) for i in range(CHUNKS)])
    took = time.perf_counter() - began
    ray.shutdown()
    return {"version": ray.__version__, "import_s": imported, "start_s": started, "job_s": took, "results": results}


def _dask() -> dict:
    began = time.perf_counter()
    import distributed
    from distributed import Client, LocalCluster
    imported = time.perf_counter() - began
    began = time.perf_counter()
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    client = Client(cluster)
    from benchmarks.engines import score_chunk as by_name  # pickled by reference, not as __main__'s by value

    client.gather(client.map(by_name, [10_000 + i for i in range(2)], pure=False))
    started = time.perf_counter() - began
    began = time.perf_counter()
    results = client.gather(client.map(by_name, range(CHUNKS), pure=False))
    took = time.perf_counter() - began
    client.close()
    cluster.close()
    return {"version": distributed.__version__, "import_s": imported, "start_s": started, "job_s": took,
            "results": results}


RAW = ROOT / "benchmarks/results/engines"  # one JSON per engine, written from its own venv


def measure(engine: str, venv: Path, base: Path, install_s: float) -> None:
    if not MODEL.is_file():
        raise SystemExit(f"{MODEL} not found: run the pipeline first (make run)")
    began = time.perf_counter()
    alone = [score_chunk(i) for i in range(CHUNKS)]
    in_process_s = time.perf_counter() - began
    measured = _ray() if engine == "ray" else _dask()
    assert np.allclose(measured.pop("results"), alone, rtol=1e-5), "the engine scored differently"
    rows = CHUNKS * ROWS
    figures = {"engine": engine, **measured, "added_mb": _size_mb(venv) - _size_mb(base), "install_s": install_s,
               "in_process_rows_per_s": rows / in_process_s, "cluster_rows_per_s": rows / measured["job_s"],
               "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    RAW.mkdir(parents=True, exist_ok=True)
    (RAW / f"{engine}.json").write_text(json.dumps(figures, indent=2))
    print(figures)


def report() -> None:
    """Both engines' figures side by side, into BENCHMARKS.md's section (from the project's venv)."""
    from benchmarks.record import save, table

    found = {p.stem: json.loads(p.read_text()) for p in sorted(RAW.glob("*.json"))}
    rows = [[name, f["version"], f["added_mb"], f["install_s"], f["import_s"], f["start_s"], f["cluster_rows_per_s"],
             f["in_process_rows_per_s"], f["cluster_rows_per_s"] / f["in_process_rows_per_s"]] for name, f in found.items()]
    markdown = "\n\n".join([
        f"The job: {CHUNKS} chunks of {ROWS:,} inputs through the pipeline's ONNX model (one ONNX Runtime thread per "
        "worker process, the session loaded once per process), on a local cluster of two worker processes; against "
        "the same chunks scored one after another in the driver. Each engine ran in its own venv (Python 3.11, with "
        "numpy and onnxruntime); its weight is that venv's size less a venv holding only those. Install seconds "
        "were timed with both installs running at once.",
        table(["engine", "version", "added MB", "install s", "import s", "cluster start s", "rows/s on the cluster",
               "rows/s in process", "cluster / in process"], rows),
    ])
    save("engines", title="Engine for batch scoring and sweeps: Ray against Dask",
         command="python -m benchmarks.engines ray|dask (in each engine's venv), then python -m benchmarks.engines report",
         markdown=markdown, figures=found)
    print(markdown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("engine", choices=["ray", "dask", "report"])
    parser.add_argument("--venv", type=Path, help="the venv this runs in (its size is measured)")
    parser.add_argument("--base", type=Path, help="a venv with numpy and onnxruntime only")
    parser.add_argument("--install-seconds", type=float, default=float("nan"), help="as timed when it was installed")
    args = parser.parse_args()
    if args.engine == "report":
        return report()
    measure(args.engine, args.venv, args.base, args.install_seconds)


if __name__ == "__main__":
    main()
