import numpy as np
import pytest
import torch

from tasks.common.config import CompressParams, TrainParams
from tasks.compress import BASELINE, choose
from tasks.compress.variants import export_onnx, prune_channels, quantize_int8, servable
from tasks.nn.latency import onnx_predictor, torch_predictor
from tasks.nn.models import build_model


def _row(name, val_accuracy, b64, size, test_accuracy=None):  # the fields `choose` reads
    test_accuracy = val_accuracy if test_accuracy is None else test_accuracy
    return {"variant": name, "accuracy": test_accuracy, "accuracy_drop": round(0.99 - test_accuracy, 6),
            "val_accuracy": val_accuracy, "val_accuracy_drop": round(0.99 - val_accuracy, 6), "latency_b64_ms": b64,
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


def test_the_choice_is_made_on_the_validation_split_never_on_the_test_split():
    table = [_row(BASELINE, 0.99, 2.0, 400), _row("fp32-onnx", 0.99, 1.0, 390),
             _row("int8-onnx", 0.96, 0.5, 110, test_accuracy=0.99)]  # fine on test, 3 points down on validation
    best, reason = choose(table, CompressParams(max_accuracy_drop=0.005, objective="size"))
    assert best["variant"] == "fp32-onnx" and "on the validation split" in reason


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


def _trained(params, prepared, tmp_path, **train_overrides):
    from tasks.train import train

    cfg = params.model_copy(update={"train": params.train.model_copy(update={"epochs": 4, "patience": 2, **train_overrides})})
    train(cfg, tmp_path, prepared, tmp_path / "train")
    return cfg


def test_distillation_follows_the_teacher_not_the_labels(params, prepared, tmp_path):
    """With the whole loss on the teacher, shuffled labels cannot pull the pruned student away from it."""
    from tasks.common.dataset import load_split
    from tasks.compress.variants import fine_tune
    from tasks.nn.checkpoint import load_checkpoint

    _trained(params, prepared, tmp_path)
    teacher, _ = load_checkpoint(tmp_path / "train" / "model.pt")
    train_split, val, test = (load_split(prepared / s) for s in ("train", "val", "test"))
    wrong = np.random.default_rng(0).permutation(np.asarray(train_split.y))
    x = np.asarray(train_split.x)
    agreement = {}
    for weight in (0.0, 1.0):
        student = prune_channels(teacher, x, 0.5, 10)
        fine_tune(student, x, wrong, val.x, val.y, epochs=4, lr=0.002, batch_size=64, seed=0,
                  teacher=teacher, distill_weight=weight)
        with torch.inference_mode():
            tx = torch.from_numpy(np.asarray(test.x))
            agreement[weight] = float((student(tx).argmax(1) == teacher(tx).argmax(1)).float().mean())
    assert agreement[1.0] > 0.9 > agreement[0.0] + 0.3


def test_compress_stage_measures_every_variant_and_ships_the_choice(params, prepared, tmp_path):
    import json

    import mlflow

    from tasks.compress import compress

    cfg = _trained(params, prepared, tmp_path, model="mlp")
    cfg = cfg.model_copy(update={"compress": cfg.compress.model_copy(update={"finetune_epochs": 2, "latency_repeats": 3})})
    result = compress(cfg, tmp_path, prepared, tmp_path / "train", tmp_path / "compress")
    table = json.loads((tmp_path / "compress" / "variants.json").read_text())
    # an MLP is all linear layers: the dynamic int8 variants are built and measured too
    assert set(table) == {BASELINE, "fp32-onnx", "int8-minmax-onnx", "int8-percentile-onnx", "int8-dynamic-onnx",
                          "pruned-fp32-onnx", "pruned-int8-minmax-onnx", "pruned-int8-percentile-onnx",
                          "pruned-int8-dynamic-onnx"}
    for row in table.values():
        assert row["size_bytes"] > 0 and row["parameters"] > 0 and 0 <= row["agreement"] <= 1
        assert row["p95_b1_ms"] >= row["latency_b1_ms"] > 0
        assert row["throughput_b64"] == pytest.approx(64_000 / row["latency_b64_ms"])
    assert table["pruned-fp32-onnx"]["parameters"] < 0.5 * table[BASELINE]["parameters"]
    chosen = table[result.chosen]
    assert result.chosen != BASELINE and chosen["val_accuracy_drop"] <= cfg.compress.max_accuracy_drop
    assert (tmp_path / "compress" / "model.onnx").read_bytes() == (tmp_path / "compress" / "variants" / f"{result.chosen}.onnx").read_bytes()
    choice = json.loads((tmp_path / "compress" / "choice.json").read_text())
    assert choice["variant"] == result.chosen and result.chosen in choice["reason"]
    run_id = json.loads((tmp_path / "train" / "run.json").read_text())["run_id"]
    run = mlflow.MlflowClient().get_run(run_id)
    assert run.data.tags["compress.chosen"] == result.chosen
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "compression")}
    assert {"compression/variants.json", "compression/accuracy_vs_latency.png", "compression/model.onnx"} <= artifacts


def test_a_pruned_vit_exports_with_a_dynamic_batch(tmp_path):
    torch.manual_seed(0)
    model = build_model(TrainParams(model="vit"), (1, 8, 8), 10).eval()
    x = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)
    pruned = prune_channels(model, x, 0.5, 10)
    assert sum(p.numel() for p in pruned.parameters()) < 0.5 * sum(p.numel() for p in model.parameters())
    images = x[:, 0] * 16
    export_onnx(servable(pruned, 16.0), images[:2], tmp_path / "vit.onnx")
    np.testing.assert_allclose(onnx_predictor(tmp_path / "vit.onnx")(images), torch_predictor(servable(pruned, 16.0))(images),
                               atol=1e-5)


def test_prune_ratio_auto_tries_ratios_from_the_smallest_and_stops_at_the_first_over_the_budget(params, prepared, tmp_path):
    import json

    from tasks.compress import compress

    cfg = _trained(params, prepared, tmp_path)
    # with a zero budget and one fine-tuning epoch, a heavily pruned net falls short and ends the search
    cfg = cfg.model_copy(update={"compress": cfg.compress.model_copy(update={
        "prune_ratio": "auto", "auto_ratios": (0.9, 0.2, 0.95), "max_accuracy_drop": 0.0, "finetune_epochs": 1,
        "latency_repeats": 3, "calibrations": ("minmax",)})})
    result = compress(cfg, tmp_path, prepared, tmp_path / "train", tmp_path / "compress")
    table = json.loads((tmp_path / "compress" / "variants.json").read_text())
    pruned = [name for name in table if name.startswith("pruned")]
    assert pruned[0].startswith("pruned20-")  # the smallest ratio first, whatever the order given
    over = [name for name in pruned if name.endswith("fp32-onnx") and table[name]["val_accuracy_drop"] > 0]
    assert over, table  # one ratio went over the budget ...
    stop = over[0].removesuffix("fp32-onnx")
    assert not any(name.startswith(stop) and "int8" in name for name in table)  # ... its int8 variants were not made
    later = {"pruned20-": ["pruned90-", "pruned95-"], "pruned90-": ["pruned95-"], "pruned95-": []}[stop]
    assert not any(name.startswith(tuple(later)) for name in table)  # ... nor any larger ratio
    assert result.chosen in table and table[result.chosen]["val_accuracy_drop"] <= 0.0
