"""Peak memory of the `train` stage on the MNIST-size set and on one 10× larger (`python -m benchmarks.train_memory`).

Each case runs `python -m tasks.train` as a user would, one epoch of the MLP, and samples the process's
resident memory every 10 ms from /proc: anonymous memory (what the process itself holds, the part that
can run a machine out of memory) and total RSS, which also counts pages of memory-mapped files (page cache
the kernel can drop at any time). The 10× set repeats the 60k training images ten times: only its size
matters here.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml

from benchmarks import mnist_size
from benchmarks.record import save, table

REPO = Path(__file__).resolve().parents[1]
CASES = [  # (scale, label, train.preload_max_mb)
    (1, "default (preloaded: under 256 MB)", 256),
    (1, "streamed (preload_max_mb: 0)", 0),
    (10, "default (streamed: over 256 MB)", 256),
    (10, "preloaded (preload_max_mb: 100000)", 100_000),
]


def write_prepared(base: dict, scale: int, folder: Path, pixel_max: float = 1.0) -> None:
    """The prepared layout `train` reads, each split repeated `scale` times, written through a memory map; served
    inputs are `pixel_max` times the prepared values (255: 8-bit images, as MNIST is)."""
    from tasks.common.outputs import DataDescription

    for name, split in base.items():
        out = folder / name
        out.mkdir(parents=True, exist_ok=True)
        reps = scale if name != "test" else 1
        x = np.lib.format.open_memmap(out / "x.npy", mode="w+", dtype=np.float32, shape=(len(split) * reps, *split.x.shape[1:]))
        for r in range(reps):
            x[r * len(split) : (r + 1) * len(split)] = split.x
        x.flush()
        del x
        np.save(out / "y.npy", np.tile(split.y, reps))
    classes = [str(k) for k in range(int(max(split.y.max() for split in base.values())) + 1)]
    DataDescription(kind="images", source="arrays", classes=classes, problem="multiclass",
                    problem_reason="the benchmark's digits", image_shape=list(base["train"].x.shape[2:]),
                    channels=int(base["train"].x.shape[1]), pixel_max=pixel_max).write(folder / "meta.json")


def run_train(root: Path, preload_max_mb: float, model: str = "mlp") -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"].update(model=model, epochs=1, preload_max_mb=preload_max_mb)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "tasks.train", "--root", str(root)], cwd=root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peaks = {"anon": 0, "rss": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                fields = dict(line.split(":", 1) for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines())
                peaks["anon"] = max(peaks["anon"], int(fields["RssAnon"].split()[0]))
                peaks["rss"] = max(peaks["rss"], int(fields["VmRSS"].split()[0]))
            except (OSError, KeyError, ValueError):
                pass
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, stderr = proc.communicate()
    stop.set()
    sampler.join()
    if proc.returncode:
        raise RuntimeError(f"train failed: {stderr[-2000:]}")
    history = (root / "artifacts" / "train" / "history.csv").read_text().splitlines()
    row = dict(zip(history[0].split(","), history[1].split(",")))
    return {"peak_anon_mb": peaks["anon"] / 1024, "peak_rss_mb": peaks["rss"] / 1024,
            "samples_per_s": float(row["samples_per_s"]), "wall_s": time.perf_counter() - started}


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    base = mnist_size.build()
    rows, figures = [], {}
    with tempfile.TemporaryDirectory(prefix="train-memory-") as tmp:
        for scale in sorted({c[0] for c in CASES}):
            data = Path(tmp) / f"x{scale}"
            write_prepared(base, scale, data / "data" / "prepared")
            megabytes = sum((data / "data" / "prepared" / s / "x.npy").stat().st_size for s in ("train", "val")) / 2**20
            for case_scale, label, preload in CASES:
                if case_scale != scale:
                    continue
                result = run_train(data, preload)
                print(f"{scale}x ({megabytes:.0f} MB) {label}: {result}", flush=True)
                figures[f"x{scale}/{preload}"] = {**result, "inputs_mb": megabytes}
                rows.append([f"{scale}× ({len(base['train']) * scale:,} train images)", f"{megabytes:.0f}", label,
                             result["peak_anon_mb"], result["peak_rss_mb"], result["samples_per_s"]])
            (data / "mlflow.db").unlink(missing_ok=True)
    markdown = "\n".join([
        "One epoch of `python -m tasks.train` (model `mlp`, 28×28 inputs, batch 64), peak memory sampled every 10 ms. "
        "*Anonymous* is memory the process owns; *RSS* also counts memory-mapped file pages, which are page cache the "
        "kernel reclaims under pressure.",
        "",
        table(["data", "train+val inputs (MB)", "mode", "peak anonymous (MB)", "peak RSS (MB)", "samples/s"], rows),
    ])
    save("train_memory", title="Training memory at 1× and 10× data", command="python -m benchmarks.train_memory",
         markdown=markdown, figures=figures)


if __name__ == "__main__":
    main()
