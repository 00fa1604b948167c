"""Tables: the network, the gradient-boosted trees and the baselines on one generated census-style table (the shape of
the classic adult income set: 32,561 rows, 6 numeric and 8 categorical columns, `?` and gaps for missing values, two
text classes, the positive one about a quarter), each figure against its goal:

- the model `train.model: auto` ships against the best of the network, the trees and the baselines on the same
  test split (goal: at least as accurate);
- the served tree model's batch-1 latency against the network's shipped variant (goal: within 2×);
- `train.model: auto` (both families and the contest) against the network alone, wall time of the train stage
  (goal: at most 1.5×).

`python -m benchmarks.tables [--rows 32561]` (the stages run in this process, in a temporary project, with
params.yaml's defaults).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.record import save, table

REPO = Path(__file__).resolve().parents[1]


def census_csv(path: Path, rows: int = 32_561, seed: int = 0) -> None:
    """A census-style table whose class (`<=50K` / `>50K`) follows age, schooling, marriage, capital gains, hours and
    occupation through steps and interactions, with noise: no model can be perfect (as on the real set, ~0.85-0.87)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    pick = lambda values, p=None: rng.choice(values, rows, p=p)  # noqa: E731
    age = rng.integers(17, 91, rows)
    education_num = np.clip(rng.normal(10, 2.5, rows).round(), 1, 16).astype(int)
    married = pick(["Married-civ-spouse", "Never-married", "Divorced", "Separated", "Widowed"],
                   [0.46, 0.33, 0.14, 0.03, 0.04])
    occupation = pick(["Exec-managerial", "Prof-specialty", "Craft-repair", "Sales", "Adm-clerical",
                       "Other-service", "Machine-op-inspct", "Transport-moving", "?"],
                      [0.13, 0.13, 0.13, 0.11, 0.12, 0.1, 0.07, 0.05, 0.16])
    gain = np.where(rng.random(rows) < 0.08, rng.choice([3103, 5178, 7298, 7688, 15024, 99999], rows), 0)
    loss = np.where(rng.random(rows) < 0.05, rng.choice([1485, 1887, 1902, 2415], rows), 0)
    hours = np.clip(rng.normal(40, 12, rows).round(), 1, 99).astype(int)
    logit = (-3.4 + 0.35 * (education_num - 10) + 2.1 * (married == "Married-civ-spouse")
             + np.where((age >= 30) & (age < 60), 1.0, np.where(age < 25, -1.5, 0.0))
             + 2.5 * (gain > 7000) - 1.0 * ((gain > 0) & (gain < 7000)) + 1.2 * (loss > 1800)
             + 0.6 * (hours > 45) - 0.8 * (hours < 30)
             + np.select([occupation == "Exec-managerial", occupation == "Prof-specialty",
                          occupation == "Other-service"], [1.0, 0.8, -1.2], 0.0)
             + 0.8 * ((education_num >= 13) & (married == "Married-civ-spouse")))
    label = np.where(rng.random(rows) < 1 / (1 + np.exp(-logit)), ">50K", "<=50K")
    frame = pd.DataFrame({
        "age": age, "workclass": pick(["Private", "Self-emp", "Local-gov", "State-gov", "Federal-gov", "?"],
                                      [0.69, 0.11, 0.07, 0.04, 0.03, 0.06]),
        "fnlwgt": rng.integers(12_000, 1_500_000, rows), "education_num": education_num,
        "marital_status": married, "occupation": occupation,
        "relationship": np.where(married == "Married-civ-spouse", pick(["Husband", "Wife"], [0.85, 0.15]),
                                 pick(["Not-in-family", "Own-child", "Unmarried"])),
        "race": pick(["White", "Black", "Asian-Pac-Islander", "Other"], [0.85, 0.1, 0.03, 0.02]),
        "sex": pick(["Male", "Female"], [0.67, 0.33]), "capital_gain": gain, "capital_loss": loss,
        "hours_per_week": hours, "native_country": pick(["United-States", "Mexico", "Philippines", "Germany", "?"],
                                                        [0.9, 0.02, 0.01, 0.01, 0.06]),
        "class": label})
    frame.loc[rng.random(rows) < 0.01, "hours_per_week"] = np.nan  # gaps beside the `?` categories
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)


def _scores(predicted: np.ndarray, y: np.ndarray) -> dict:
    from sklearn.metrics import f1_score

    return {"accuracy": float((predicted == y).mean()), "f1_macro": float(f1_score(y, predicted, average="macro"))}


def family_run(params, root: Path, model: str) -> dict:
    """The train stage with `train.model: model` (wall time), then compress on its model: the shipped variant's
    size, batch-1 latency and test scores."""
    from tasks.common.dataset import load_split, served_inputs
    from tasks.compress import compress
    from tasks.nn.latency import onnx_predictor, predicted_classes
    from tasks.train import train

    run = params.model_copy(update={"train": params.train.model_copy(update={"model": model})})
    out = root / model
    began = time.perf_counter()
    result = train(run, root, root / "prepared", out / "train")
    seconds = time.perf_counter() - began
    shipped = compress(run, root, root / "prepared", out / "train", out / "compress")
    chosen = next(r for r in shipped.table if r["variant"] == shipped.chosen)
    test = load_split(root / "prepared" / "test")
    predicted = predicted_classes(onnx_predictor(out / "compress" / "model.onnx"), served_inputs(test.x, 1.0))
    import json

    families = json.loads((out / "train" / "metrics.json").read_text()).get("families", {})
    return {"family": result.family, "families": families, "train_seconds": seconds, "variant": shipped.chosen,
            "size_bytes": chosen["size_bytes"], "latency_b1_ms": chosen["latency_b1_ms"],
            "latency_b64_ms": chosen["latency_b64_ms"], **_scores(predicted, test.y)}


def main(argv: list[str] | None = None) -> None:
    from tasks.common.config import load_params
    from tasks.common.dataset import load_split
    from tasks.evaluate.baselines import fit_baselines
    from tasks.ingest import ingest
    from tasks.prepare import prepare
    from tasks.train import train

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=32_561)
    rows = parser.parse_args(argv).rows
    with tempfile.TemporaryDirectory(prefix="bench-tables-") as tmp:
        root = Path(tmp)
        census_csv(root / "census.csv", rows)
        params = load_params(REPO / "params.yaml")
        params = params.model_copy(update={
            "ingest": params.ingest.model_copy(update={"path": "census.csv", "label_column": "class"}),
            "base": params.base.model_copy(update={"experiment": "bench-tables"})})
        ingest(params.ingest, root, root / "raw")
        prepare(params.prepare, params.base.seed, root / "raw", root / "prepared")
        quick = params.model_copy(update={"train": params.train.model_copy(update={"epochs": 1})})
        train(quick, root, root / "prepared", root / "warm-up" / "train")  # imports, MLflow's database: not timed
        runs = {model: family_run(params, root, model) for model in ("mlp", "tree", "auto")}
        train, test = load_split(root / "prepared" / "train"), load_split(root / "prepared" / "test")
        baselines = {b.name: {"accuracy": b.accuracy, "f1_macro": b.f1_macro, "fit_seconds": b.fit_seconds}
                     for b in fit_baselines(train.x, train.y, test.x, test.y, "table", params.base.seed)}
        figures = {"rows": rows, "features": int(train.x.shape[1]), "test_rows": len(test.y), "runs": runs,
                   "baselines": baselines}
    _record(figures)


def _record(f: dict) -> None:
    runs, baselines = f["runs"], f["baselines"]
    net, tree, auto = runs["mlp"], runs["tree"], runs["auto"]
    rivals = {"network (mlp)": net["accuracy"], "trees": tree["accuracy"],
              **{name: b["accuracy"] for name, b in baselines.items()}}
    best = max(rivals, key=rivals.get)
    latency, cost = tree["latency_b1_ms"] / net["latency_b1_ms"], auto["train_seconds"] / net["train_seconds"]
    verdict = lambda ok: "met" if ok else "**not met**"  # noqa: E731
    models = table(["model", "test accuracy", "macro-F1", "train s", "served size", "latency b1 / b64 (ms)"], [
        *[[f"{name} ({r['variant']})", r["accuracy"], r["f1_macro"], f"{r['train_seconds']:.1f}",
           f"{r['size_bytes'] / 1024:.0f} KB", f"{r['latency_b1_ms']:.3f} / {r['latency_b64_ms']:.3f}"]
          for name, r in (("network, `train.model: mlp`", net), ("trees, `train.model: tree`", tree),
                          (f"shipped by `train.model: auto`: {auto['family']}", auto))],
        *[[f"baseline: {name}", b["accuracy"], b["f1_macro"], f"{b['fit_seconds']:.1f}", "", ""]
          for name, b in baselines.items()]])
    goals = table(["figure", "measured", "goal", ""], [
        ["`auto`'s shipped model vs the best rival on the test split",
         f"{auto['accuracy']:.4f} ({auto['family']}) vs {rivals[best]:.4f} ({best})", "at least as accurate",
         verdict(auto["accuracy"] >= rivals[best])],
        ["served tree model's batch-1 latency vs the network's shipped variant",
         f"{tree['latency_b1_ms']:.3f} ms vs {net['latency_b1_ms']:.3f} ms ({latency:.2f}×)", "within 2×",
         verdict(latency <= 2)],
        ["`train.model: auto` train stage vs the network alone", f"{auto['train_seconds']:.1f} s vs "
         f"{net['train_seconds']:.1f} s ({cost:.2f}×)", "≤ 1.5×", verdict(cost <= 1.5)],
    ])
    contest = "; ".join(f"{name} {scores['val_accuracy']:.4f} (log-loss {scores['val_log_loss']:.4f})"
                        for name, scores in auto["families"].items())
    note = (f"{f['rows']:,} generated census-style rows (benchmarks/tables.py `census_csv`), {f['features']} encoded "
            f"features, split 65/15/20 ({f['test_rows']:,} test rows); params.yaml's defaults (60 epochs, patience "
            "10; trees: up to 500 rounds, patience 10). Each model through the `train` and `compress` stages in "
            "this process; size and latency are the shipped ONNX file's, measured by compress (ONNX Runtime, "
            "median of 200 batch-1 calls and 50 at batch 64); baselines as evaluate fits them (on 10,000 "
            f"training rows at most). `auto`'s contest on the validation split, accuracy: {contest}: {auto['family']} "
            "shipped; the train "
            "times follow a 1-epoch warm-up run (imports, MLflow's database).")
    save("tables", title="Tables: the network, the trees and the baselines on a 32,561-row census-style table",
         command="python -m benchmarks.tables", markdown=note + "\n\n" + goals + "\n\n" + models, figures=f)
    print(goals + "\n\n" + models)


if __name__ == "__main__":
    main()
