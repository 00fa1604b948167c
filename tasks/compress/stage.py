"""Stage `compress`: make pruned and int8 variants, measure each against fp32, ship the best within the budget."""

from __future__ import annotations

import io
import itertools
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tasks.common.atomic import write_json, write_with
from tasks.common.config import CompressParams, Params
from tasks.common.dataset import load_split, served_inputs
from tasks.common.layout import Layout
from tasks.common.outputs import CompressChoice

log = logging.getLogger(__name__)
BASELINE = "fp32-torch"  # a network's reference row: what every variant is measured against
TREE_VARIANT = "tree-onnx"  # a tree ensemble's one row (no torch form to compare with)
OBJECTIVE_KEY = {"latency_b1": "latency_b1_ms", "latency_b64": "latency_b64_ms", "size": "size_bytes"}


@dataclass(frozen=True)
class CompressResult:
    chosen: str
    reason: str
    table: list[dict]


def compress(params: Params, root: Path, prepared_dir: Path, train_dir: Path, out_dir: Path) -> CompressResult:
    """Build, measure and choose; the chosen ONNX model lands in `out_dir/model.onnx`."""
    import mlflow

    from tasks.common import tracking
    from tasks.common.dataset import prepared_meta
    from tasks.nn.checkpoint import TreeModel, load_checkpoint

    meta = prepared_meta(prepared_dir)
    cfg, pixel_max = params.compress, meta.pixel_max
    model, payload = load_checkpoint(train_dir / "model.pt")
    splits = tuple(load_split(prepared_dir / s) for s in ("train", "val", "test"))
    variants_dir = out_dir / "variants"
    variants_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(model, TreeModel):
        rows = _tree_rows(model, splits, pixel_max, variants_dir, cfg.latency_repeats, params.train.threads)
    else:
        rows = _network_rows(model, payload, splits, params, meta, variants_dir)
    table = _relative_to_baseline(rows)
    chosen, reason = choose(table, cfg)
    if isinstance(model, TreeModel):
        reason = (f"shipped the tree ensemble as trained ({TREE_VARIANT}, {chosen['size_bytes'] / 1024:.0f} KB, "
                  f"{chosen['latency_b1_ms']:.3f} ms at batch 1, test accuracy {chosen['accuracy']:.4f}): channel "
                  "pruning and int8 apply to a network's weights, not to trees")
    write_with(out_dir / "model.onnx", lambda tmp: shutil.copyfile(variants_dir / f"{chosen['variant']}.onnx", tmp))
    write_json(out_dir / "variants.json", {r["variant"]: {k: v for k, v in r.items() if k != "variant"} for r in table})
    write_json(out_dir / "metrics.json", {"chosen": chosen["variant"], **{k: v for k, v in chosen.items() if k != "variant"}})
    CompressChoice(variant=chosen["variant"], reason=reason, pixel_max=pixel_max, kind=meta.kind,
                   input_shape=payload["input_shape"], served_shape=meta.served_shape,
                   classes=meta.classes).write(out_dir / "choice.json")
    write_with(out_dir / "accuracy_vs_latency.png", lambda tmp: _plot(tmp, table, chosen["variant"]))
    with tracking.resumed_run(root, params.base.experiment, train_dir / "run.json"):
        mlflow.log_table({k: [r[k] for r in table] for k in table[0]}, artifact_file="compression/variants.json")
        mlflow.log_artifact(str(out_dir / "accuracy_vs_latency.png"), artifact_path="compression")
        mlflow.log_artifact(str(out_dir / "model.onnx"), artifact_path="compression")
        mlflow.log_metrics({f"compress_{k}": float(v) for k, v in chosen.items() if k != "variant"})
        mlflow.set_tags({"compress.chosen": chosen["variant"], "compress.reason": reason})
    log.info("compress: %s", reason)
    return CompressResult(chosen["variant"], reason, table)


def _network_rows(model, payload, splits: tuple, params: Params, meta, variants_dir: Path) -> list[dict]:
    """A network's rows: fp32 in torch (the reference), fp32 ONNX, pruned and fine-tuned ONNX per ratio, and the int8
    variants of each; the ONNX files written to `variants_dir`."""
    from tasks.compress.variants import export_onnx, servable
    from tasks.nn.latency import measure, onnx_predictor, predicted_classes, torch_predictor
    from tasks.nn.models import token_layout

    cfg, pixel_max, (train, val, test) = params.compress, meta.pixel_max, splits
    wrap = lambda net: servable(net, pixel_max, image_input=meta.kind == "images")  # noqa: E731
    images = served_inputs(test.x, pixel_max)
    baseline, text = wrap(model), token_layout(model)  # text: rows cut after their last token, as served
    reference = predicted_classes(torch_predictor(baseline, text), images)
    held_out = served_inputs(val.x, pixel_max)  # the choice is made on the validation split; the test split only reports
    measured = lambda predict: (measure(predict, images, test.y, reference, cfg.latency_repeats),  # noqa: E731
                                float((predicted_classes(predict, held_out) == val.y).mean()))
    rows = [_row(BASELINE, _state_dict_bytes(baseline), _count(model), *measured(torch_predictor(baseline, text)))]
    calibration = served_inputs(train.x[: cfg.calibration_samples], pixel_max)
    fp32_val = rows[0]["val_accuracy"]
    threads = params.train.threads  # as training: in a sweep, this trial's share of the cores (0: all of them)
    for prefix, net in itertools.chain([("", model)], _pruned(model, payload, train, val, params)):  # lazily
        fp32_path = variants_dir / f"{prefix}fp32-onnx.onnx"
        export_onnx(wrap(net), images[:2], fp32_path, any_length=text is not None)
        rows.append(_row(f"{prefix}fp32-onnx", fp32_path.stat().st_size, _count(net),
                         *measured(onnx_predictor(fp32_path, threads, text))))
        if prefix and cfg.prune_ratio == "auto" and fp32_val - rows[-1]["val_accuracy"] > cfg.max_accuracy_drop:
            # its int8 variants only lose more, and so would a larger ratio: the search stops here
            log.info("compress: %s is %.4f below fp32 on validation, over the budget: no larger ratio is tried",
                     prefix.rstrip("-"), fp32_val - rows[-1]["val_accuracy"])
            break
        for kind in _quantized(fp32_path, net, variants_dir, prefix, calibration, cfg.calibrations):
            path = variants_dir / f"{prefix}{kind}.onnx"
            rows.append(_row(f"{prefix}{kind}", path.stat().st_size, _count(net),
                             *measured(onnx_predictor(path, threads, text))))
    return rows


def _tree_rows(model, splits: tuple, pixel_max: float, variants_dir: Path, repeats: int, threads: int) -> list[dict]:
    """A tree ensemble's one row: its ONNX graph as trained (TreeEnsembleClassifier), measured like a network's
    variants. Channel pruning and int8 do not apply: the ensemble holds thresholds and leaf values, no weight
    matrices; ONNX Runtime runs it in float32 at batch 1 in tens of microseconds."""
    from tasks.nn.latency import measure, onnx_predictor, predicted_classes

    _, val, test = splits
    path = variants_dir / f"{TREE_VARIANT}.onnx"
    write_with(path, lambda tmp: tmp.write_bytes(model.onnx))
    predict = onnx_predictor(path, threads)
    measured = measure(predict, served_inputs(test.x, pixel_max), test.y, None, repeats)
    val_accuracy = float((predicted_classes(predict, served_inputs(val.x, pixel_max)) == val.y).mean())
    return [_row(TREE_VARIANT, path.stat().st_size, model.nodes(), measured, val_accuracy)]


def _quantized(fp32_path: Path, net, variants_dir: Path, prefix: str, calibration: np.ndarray,
               methods: list[str]) -> list[str]:
    """The int8 variants of one fp32 ONNX model, written beside it: static, one per calibration method (they clip
    activation ranges differently: measured, not guessed), and dynamic where linear layers dominate (on a conv net
    it changes nothing); their kinds."""
    from tasks.compress.variants import quantize_dynamic_int8, quantize_int8

    kinds = []
    for method in methods:
        quantize_int8(fp32_path, variants_dir / f"{prefix}int8-{method}-onnx.onnx", calibration, method)
        kinds.append(f"int8-{method}-onnx")
    if _linear_share(net) >= 0.5:
        quantize_dynamic_int8(fp32_path, variants_dir / f"{prefix}int8-dynamic-onnx.onnx")
        kinds.append("int8-dynamic-onnx")
    return kinds


def _pruned(model, payload, train, val, params: Params):
    """(prefix, pruned and fine-tuned net) per prune ratio, made one at a time as the caller asks: `prune_ratio: auto`
    tries `auto_ratios` from the smallest up (`pruned50-`, ...), a fixed ratio gives one (`pruned-`), 0 none."""
    from tasks.compress.variants import fine_tune, prune_channels

    from torch import nn

    cfg = params.compress
    ratios = sorted(cfg.auto_ratios) if cfg.prune_ratio == "auto" else [cfg.prune_ratio] if cfg.prune_ratio > 0 else []
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if ratios and all(getattr(m, "out_features", None) == payload["n_classes"] for m in layers):
        log.info("compress: no layer to prune (the head alone is linear: a logistic regression keeps its inputs)")
        return
    for ratio in ratios:
        pruned = prune_channels(model, np.asarray(train.x), ratio, payload["n_classes"])
        pruned = fine_tune(pruned, train.x, train.y, val.x, val.y, epochs=cfg.finetune_epochs,
                           lr=params.train.lr / 2, batch_size=params.train.batch_size, seed=params.base.seed,
                           teacher=model, temperature=cfg.distill_temperature, distill_weight=cfg.distill_weight)
        yield (f"pruned{round(ratio * 1000) / 10:g}-" if cfg.prune_ratio == "auto" else "pruned-"), pruned


def choose(table: list[dict], cfg: CompressParams) -> tuple[dict, str]:
    """The best variant by `cfg.objective` among the servable ones within `max_accuracy_drop` of fp32's accuracy on
    the validation split (the test split is not used to choose: its figures are reported, not selected on)."""
    key = OBJECTIVE_KEY[cfg.objective]
    eligible = [r for r in table if r["variant"] != BASELINE and r["val_accuracy_drop"] <= cfg.max_accuracy_drop]
    if not eligible:  # fp32 ONNX computes the same function; only numerical noise can exclude it
        eligible = [r for r in table if r["variant"] in ("fp32-onnx", TREE_VARIANT)]
    best = min(eligible, key=lambda r: r[key])
    reason = (
        f"chose {best['variant']}: lowest {key} ({best[key]:.4g}) among {len(eligible)} variant(s) within "
        f"{cfg.max_accuracy_drop:.3f} of fp32 accuracy on the validation split; {best['size_ratio']:.1f}x smaller, "
        f"{best['speedup_b1']:.1f}x faster at batch 1, {best['speedup_b64']:.1f}x at batch 64, "
        f"validation accuracy drop {best['val_accuracy_drop']:+.4f}, test accuracy {best['accuracy']:.4f} "
        f"(drop {best['accuracy_drop']:+.4f})"
    )
    return best, reason


def _row(name: str, size: int, parameters: int, m, val_accuracy: float) -> dict:
    return {"variant": name, "size_bytes": size, "parameters": parameters, **asdict(m), "val_accuracy": val_accuracy}


def _relative_to_baseline(rows: list[dict]) -> list[dict]:
    base = rows[0]
    return [
        {
            **r,
            "accuracy_drop": round(base["accuracy"] - r["accuracy"], 6),
            "val_accuracy_drop": round(base["val_accuracy"] - r["val_accuracy"], 6),
            "size_ratio": base["size_bytes"] / r["size_bytes"],
            "speedup_b1": base["latency_b1_ms"] / r["latency_b1_ms"],
            "speedup_b64": base["latency_b64_ms"] / r["latency_b64_ms"],
            "throughput_b64": 64_000 / r["latency_b64_ms"],  # images/s when requests come 64 at a time
        }
        for r in rows
    ]


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _linear_share(model) -> float:
    """Share of the parameters held by linear layers."""
    from torch import nn

    linear = sum(p.numel() for m in model.modules() if isinstance(m, nn.Linear) for p in m.parameters())
    return linear / max(_count(model), 1)


def _state_dict_bytes(model) -> int:
    import torch

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def _plot(path: Path, table: list[dict], chosen: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, row in enumerate(table):
        ax.scatter(row["latency_b64_ms"], row["accuracy"], s=40 + row["size_bytes"] / 4000,
                   marker="*" if row["variant"] == chosen else "o")
        ax.annotate(f"{row['variant']} ({row['size_bytes'] / 1024:.0f} KB)", (row["latency_b64_ms"], row["accuracy"]),
                    textcoords="offset points", xytext=(5, 4 - 12 * (i % 3)), fontsize=8)  # staggered: points often overlap
    ax.set_xscale("log")
    ax.set_xlabel("CPU latency at batch 64 (ms, median, log scale)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Compression variants (star: shipped)")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


def run(params: Params, layout: Layout) -> CompressResult:
    """The stage as dvc.yaml runs it (`python -m tasks.compress`): params.yaml's values, the project's paths."""
    return compress(params, layout.root, layout.prepared, layout.train, layout.compress)
