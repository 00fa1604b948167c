"""Which runtime gives the CPU speed-up: PyTorch (eager, Inductor, torchao PT2E int8) against ONNX Runtime (fp32, int8).

The same CNN (the pipeline's default architecture, random weights: only speed is compared here) at the
digits' 8×8 and at MNIST's 28×28. `python -m benchmarks.compression_backends`
"""

from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from benchmarks.record import save, table

SIZES = (8, 28)
REPEATS = {1: 300, 64: 60}


def backends(model, example: np.ndarray, workdir: Path) -> dict:
    """name → predict function (raw images → probabilities) for every runtime compared."""
    import torch

    from tasks.compress.variants import export_onnx, quantize_int8
    from tasks.nn.latency import onnx_predictor, torch_predictor

    export_onnx(model, example[:2], workdir / "fp32.onnx")
    quantize_int8(workdir / "fp32.onnx", workdir / "int8.onnx", example)
    return {
        "torch eager fp32": torch_predictor(model),
        "torch.compile fp32 (Inductor)": torch_predictor(torch.compile(model)),
        "torchao PT2E int8 (X86Inductor)": torch_predictor(_pt2e_int8(model, example)),
        "ONNX Runtime fp32": onnx_predictor(workdir / "fp32.onnx"),
        "ONNX Runtime int8 (QDQ static)": onnx_predictor(workdir / "int8.onnx"),
    }


def _pt2e_int8(model, example: np.ndarray):
    import torch
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    batch = torch.export.Dim("batch", min=1, max=1024)
    graph = torch.export.export(model, (torch.from_numpy(example),), dynamic_shapes=({0: batch},)).module()
    quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(graph, quantizer)
    for i in range(0, len(example), 64):  # calibration
        prepared(torch.from_numpy(example[i : i + 64]))
    return torch.compile(convert_pt2e(prepared))


def measure_size(size: int) -> list[dict]:
    import torch

    from tasks.common.config import TrainParams
    from tasks.compress.variants import servable
    from tasks.nn.latency import timings
    from tasks.nn.models import build_model

    torch.manual_seed(0)
    model = servable(build_model(TrainParams(), (1, size, size), 10), 1.0)
    example = np.random.default_rng(0).random((256, size, size), dtype=np.float32)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, predict in backends(model, example, Path(tmp)).items():
            started = time.perf_counter()
            predict(example[:1]), predict(example[:64])  # first calls compile where the backend compiles
            first_calls = time.perf_counter() - started
            b1, b64 = (float(np.median(timings(predict, example[:n], REPEATS[n]))) for n in (1, 64))
            rows.append({"backend": name, "image": f"{size}×{size}", "b1_ms": b1, "b64_ms": b64,
                         "first_calls_s": first_calls})
    base = rows[0]
    for row in rows:
        row["speedup_b1"], row["speedup_b64"] = base["b1_ms"] / row["b1_ms"], base["b64_ms"] / row["b64_ms"]
    return rows


def main() -> None:
    warnings.filterwarnings("ignore")
    rows = [row for size in SIZES for row in measure_size(size)]
    body = table(["image", "runtime", "b1 ms", "b64 ms", "faster b1", "faster b64", "first calls s"],
                 [[r["image"], r["backend"], r["b1_ms"], r["b64_ms"], f"{r['speedup_b1']:.1f}×", f"{r['speedup_b64']:.1f}×",
                   f"{r['first_calls_s']:.1f}"] for r in rows])
    note = ("Median latency over repeated calls after warm-up, one process, all cores. \"first calls\" is the time of "
            "the first batch-1 and batch-64 calls, which is when torch.compile compiles (ONNX Runtime has none). "
            "The compress stage ships ONNX Runtime models: see the table for why.")
    save("compression_backends", title="Compression runtimes: PyTorch/torchao against ONNX Runtime",
         command="python -m benchmarks.compression_backends", markdown=note + "\n\n" + body, figures={"rows": rows})
    print(body)


if __name__ == "__main__":
    main()
