"""Build real Bentos around a small digits MLP in seconds, for the tests that serve one over HTTP.

Run as a subprocess (`python -m tests.bento_builder OUT.json --count 2`) with BENTOML_HOME set: BentoML reads
its home once per process, and each test module wants its own store. The model goes through the same ONNX
export and `build_bento` as the `package` stage; only the training is shortened (an MLP, a few seconds).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def train_tiny_mlp(seed: int = 0):
    """An MLP on scikit-learn's digits (8×8, 0..16): ~95 % test accuracy after 300 full-batch steps."""
    import torch
    from sklearn.datasets import load_digits

    from tasks.nn.models import MLP

    torch.manual_seed(seed)
    digits = load_digits()
    x = torch.tensor(digits.images[:1400] / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target[:1400])
    model = MLP(64, (64,), 10, dropout=0.0)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(300):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimiser.step()
    return model.eval()


# A small table: two numeric columns and one text column, as tasks.common.tables.describe writes its encoding.
TABLE_ENCODING = {
    "numeric": [{"column": "width", "fill": 2.0, "mean": 2.5, "scale": 1.5},
                {"column": "height", "fill": 10.0, "mean": 9.0, "scale": 4.0}],
    "categorical": [{"column": "stroke", "fill": "medium", "categories": ["bold", "medium", "thin"]}],
}


TABLE_CLASSES = ["narrow", "square", "tall"]
DIGIT_CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]  # names, not indices


def table_rows(count: int, seed: int = 0) -> list[dict]:
    """Rows like the table model's training rows: width 1..4, height 5..13, a stroke."""
    rng = np.random.default_rng(seed)
    return [{"width": float(rng.uniform(1, 4)), "height": float(rng.uniform(5, 13)),
             "stroke": str(rng.choice(["bold", "medium", "thin"]))} for _ in range(count)]


def build_table(out: Path) -> dict:
    """A Bento around an (untrained) MLP over the 5 encoded features of TABLE_ENCODING, 3 classes."""
    import torch

    from tasks.common.config import load_params
    from tasks.compress.variants import export_onnx, servable
    from tasks.nn.models import MLP
    from tasks.package import build_bento
    from tasks.shipped.rows import encode_rows
    from tasks.shipped.skew import expectations

    torch.manual_seed(0)
    model = MLP(5, (16,), 3, dropout=0.0).eval()
    onnx_path = out.with_suffix(".onnx")
    export_onnx(servable(model, pixel_max=1.0, image_input=False), np.zeros((1, 5), np.float32), onnx_path)
    metadata = {"input_shape": [5], "served_shape": [5], "pixel_max": 1.0, "kind": "table", "classes": TABLE_CLASSES,
                "problem": "multiclass", "variant": "fp32-onnx",
                "model_version": "1", "registered_model": "table-classifier", "encoding": TABLE_ENCODING,
                "expectations": expectations(encode_rows(table_rows(200), TABLE_ENCODING), "table", "table[:200]")}
    result = build_bento(onnx_path, metadata, {"variant": "fp32-onnx", "model_version": "1"},
                         load_params(REPO / "params.yaml").package, REPO / "bento")
    info = {"bentos": [result.bento_tag], "models": [result.model_tag], "onnx": str(onnx_path)}
    out.write_text(json.dumps(info))
    return info


def build(out: Path, count: int, package: dict | None = None) -> dict:
    from sklearn.datasets import load_digits

    from tasks.common.config import load_params
    from tasks.compress.variants import export_onnx, servable
    from tasks.package import build_bento
    from tasks.shipped.skew import expectations

    params = load_params(REPO / "params.yaml")
    model = train_tiny_mlp()
    trained_on = load_digits().images[:1400]  # what train_tiny_mlp saw, in the 0..16 units the service receives
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        export_onnx(servable(model, pixel_max=16.0), np.zeros((1, 8, 8), np.float32), onnx_path)
        metadata = {"input_shape": [1, 8, 8], "served_shape": [8, 8], "pixel_max": 16.0, "kind": "images",
                    "classes": DIGIT_CLASSES, "problem": "multiclass",
                    "variant": "fp32-onnx", "model_version": "1", "registered_model": "digits-classifier",
                    "expectations": expectations(trained_on, "images", "digits[:1400]")}
        results = [build_bento(onnx_path, metadata, {"variant": "fp32-onnx", "model_version": str(i + 1)},
                               params.package.model_copy(update=package or {}), REPO / "bento") for i in range(count)]
        model_path = out.with_suffix(".onnx")
        model_path.write_bytes(onnx_path.read_bytes())
    info = {"bentos": [r.bento_tag for r in results], "models": [r.model_tag for r in results],
            "onnx": str(model_path)}
    out.write_text(json.dumps(info))
    return info


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--table", action="store_true", help="one Bento of a model over table rows instead")
    parser.add_argument("--package", type=json.loads, default={}, help="params.yaml `package` values to override (JSON)")
    args = parser.parse_args()
    build_table(args.out) if args.table else build(args.out, args.count, args.package)
    sys.exit(0)
