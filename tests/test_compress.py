import numpy as np
import torch

from tasks.compress import BASELINE, choose
from tasks.config import CompressParams, TrainParams
from tasks.models import build_model
from tasks.variants import export_onnx, prune_channels, quantize_int8, servable
from tasks.latency import onnx_predictor, torch_predictor


def _row(name, accuracy, b64, size):
    return {"variant": name, "accuracy": accuracy, "accuracy_drop": round(0.99 - accuracy, 6), "latency_b64_ms": b64,
            "latency_b1_ms": b64 / 10, "size_bytes": size, "size_ratio": 1.0, "speedup_b1": 1.0, "speedup_b64": 1.0}


def test_choice_respects_the_accuracy_budget_and_the_objective():
    table = [_row(BASELINE, 0.99, 2.0, 400), _row("fp32-onnx", 0.99, 1.0, 390),
             _row("int8-onnx", 0.987, 0.5, 110), _row("pruned-int8-onnx", 0.97, 0.2, 40)]
    best, reason = choose(table, CompressParams(max_accuracy_drop=0.005, objective="latency_b64"))
    assert best["variant"] == "int8-onnx" and "int8-onnx" in reason
    best, _ = choose(table, CompressParams(max_accuracy_drop=0.05, objective="size"))
    assert best["variant"] == "pruned-int8-onnx"
    best, _ = choose(table, CompressParams(max_accuracy_drop=0.0, objective="latency_b64"))
    assert best["variant"] == "fp32-onnx"  # never the torch baseline: the service loads ONNX only


def test_structured_pruning_removes_parameters_for_real():
    model = build_model(TrainParams(), (1, 8, 8), 10).eval()
    x = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)
    pruned = prune_channels(model, x, 0.5, 10)
    before, after = (sum(p.numel() for p in m.parameters()) for m in (model, pruned))
    assert after < 0.35 * before
    assert pruned(torch.from_numpy(x)).shape == (4, 10)


def test_onnx_export_matches_torch_and_int8_is_smaller(tmp_path):
    torch.manual_seed(0)
    model = build_model(TrainParams(), (1, 8, 8), 10).eval()
    wrapped = servable(model, 16.0)
    images = np.random.default_rng(0).integers(0, 17, (64, 8, 8)).astype(np.float32)
    export_onnx(wrapped, images[:2], tmp_path / "fp32.onnx")
    np.testing.assert_allclose(onnx_predictor(tmp_path / "fp32.onnx")(images), torch_predictor(wrapped)(images), atol=1e-5)
    quantize_int8(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", images)
    assert (tmp_path / "int8.onnx").stat().st_size < 0.4 * (tmp_path / "fp32.onnx").stat().st_size
    assert onnx_predictor(tmp_path / "int8.onnx")(images).shape == (64, 10)
