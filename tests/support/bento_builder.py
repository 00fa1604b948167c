"""Build real Bentos around a small digits MLP in seconds, for the tests that serve one over HTTP.

Run as a subprocess (`python -m tests.support.bento_builder OUT.json`) with BENTOML_HOME set (BentoML reads its home
once per process): it builds every Bento the tests use, once per test session, into one store (tests/conftest.py,
`bento_store`), and writes what it built to OUT.json by set name (CATALOGUE). The model goes through the same ONNX
export and `build_bento` as the `package` stage; only the training is shortened (an MLP, a few seconds).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


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
    onnx_path = out.with_name("table.onnx")
    export_onnx(servable(model, pixel_max=1.0, image_input=False), np.zeros((1, 5), np.float32), onnx_path)
    metadata = {"input_shape": [5], "served_shape": [5], "pixel_max": 1.0, "kind": "table", "classes": TABLE_CLASSES,
                "problem": "multiclass", "variant": "fp32-onnx",
                "model_version": "1", "registered_model": "table-classifier", "encoding": TABLE_ENCODING,
                "expectations": expectations(encode_rows(table_rows(200), TABLE_ENCODING), "table", "table[:200]")}
    result = build_bento(onnx_path, metadata, {"variant": "fp32-onnx", "model_version": "1"},
                         load_params(REPO / "params.yaml").package, REPO / "bento")
    return {"bentos": [result.bento_tag], "models": [result.model_tag], "onnx": str(onnx_path)}


def build_text(out: Path) -> dict:
    """A Bento around an (untrained) Transformer over one text column, `message`, with a tokenizer learnt from
    generated tickets (tests/support/own_data.py): what /predict_text serves."""
    import pandas as pd
    import torch

    from tasks.common.config import TrainParams, load_params
    from tasks.common.tables import LABEL, describe, encode, fit_encoder
    from tasks.compress.variants import export_onnx, servable
    from tasks.nn.models import build_model
    from tasks.package import build_bento
    from tasks.shipped.skew import expectations
    from tasks.shipped.text import text_layout
    from tests.support.own_data import tickets

    frame = tickets(200, seed=4).drop(columns=["channel"]).rename(columns={"queue": LABEL}).assign(**{LABEL: 0})
    encoder = fit_encoder(frame, ["message"], vocab_size=300, max_tokens=32)
    x, spec = encode(encoder, frame), describe(encoder)
    layout = text_layout(spec, x.shape[1])
    torch.manual_seed(0)
    model = build_model(TrainParams(text_depth=1), (x.shape[1],), 3, layout).eval()
    onnx_path = out.with_name("text.onnx")
    export_onnx(servable(model, pixel_max=1.0, image_input=False), x[:2], onnx_path, any_length=True)
    metadata = {"input_shape": [x.shape[1]], "served_shape": [x.shape[1]], "pixel_max": 1.0, "kind": "table",
                "classes": TEXT_CLASSES, "problem": "multiclass", "variant": "fp32-onnx", "model_version": "1",
                "registered_model": "text-classifier", "encoding": spec,
                "expectations": expectations(x, "table", "tickets[:200]", layout)}
    result = build_bento(onnx_path, metadata, {"variant": "fp32-onnx", "model_version": "1"},
                         load_params(REPO / "params.yaml").package, REPO / "bento")
    return {"bentos": [result.bento_tag], "models": [result.model_tag], "onnx": str(onnx_path), "encoding": spec,
            "texts": pd.Series(frame["message"]).head(8).tolist()}


TEXT_CLASSES = ["billing", "shipping", "technical"]


def build_digits(onnx_path: Path, count: int, package: dict | None = None) -> dict:
    """`count` Bentos of the digits model at `onnx_path` (versions 1..count), with `package` params changed."""
    from sklearn.datasets import load_digits

    from tasks.common.config import load_params
    from tasks.package import build_bento
    from tasks.shipped.skew import expectations

    params = load_params(REPO / "params.yaml")
    trained_on = load_digits().images[:1400]  # what train_tiny_mlp saw, in the 0..16 units the service receives
    metadata = {"input_shape": [1, 8, 8], "served_shape": [8, 8], "pixel_max": 16.0, "kind": "images",
                "classes": DIGIT_CLASSES, "problem": "multiclass",
                "variant": "fp32-onnx", "model_version": "1", "registered_model": "digits-classifier",
                "expectations": expectations(trained_on, "images", "digits[:1400]")}
    results = [build_bento(onnx_path, metadata, {"variant": "fp32-onnx", "model_version": str(i + 1)},
                           params.package.model_copy(update=package or {}), REPO / "bento") for i in range(count)]
    return {"bentos": [r.bento_tag for r in results], "models": [r.model_tag for r in results], "onnx": str(onnx_path)}


# The sets of Bentos the tests share: name -> (how many, the `package` params that differ from params.yaml).
CATALOGUE = {
    "digits": (2, {}),                                   # the service, roll-outs (two to switch between), scoring
    "broken": (1, {}),                                   # promote: its model file is garbage, so it cannot load
    "thread": (1, {"inline_inference": False}),          # /predict off the event loop
    "two_places": (1, {"max_concurrent_requests": 2}),   # admission: the third request is refused at arrival
}


def build_all(out: Path) -> dict:
    """Every set in CATALOGUE, the table model's ("table") and the text model's ("text"), into the store BENTOML_HOME
    names."""
    import os

    from tasks.compress.variants import export_onnx, servable

    onnx_path = out.with_name("digits.onnx")
    export_onnx(servable(train_tiny_mlp(), pixel_max=16.0), np.zeros((1, 8, 8), np.float32), onnx_path)
    info = {name: build_digits(onnx_path, count, package) for name, (count, package) in CATALOGUE.items()}
    broken = info["broken"]["models"][0].replace(":", "/")
    (Path(os.environ["BENTOML_HOME"]) / "models" / broken / "model.onnx").write_bytes(b"not an ONNX model")
    info["table"] = build_table(out)
    info["text"] = build_text(out)
    out.write_text(json.dumps(info))
    return info


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    build_all(parser.parse_args().out)
    sys.exit(0)
