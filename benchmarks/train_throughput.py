"""Training speed: our `train` stage's samples/s against a minimal bare PyTorch loop, same model, data and batch.

Both run in this process on the same device, taking turns five times; each figure is the best of the five
medians over epochs (a shared 2-core machine drifts by ±20 % between runs, the best run is the stable one).
Augmentation is off for the comparison (the bare loop has none) and measured on its own as a further row.
`python -m benchmarks.train_throughput`
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.record import save, table

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 20
REPEATS = 5


def bare_loop(params, prepared: Path, epochs: int, text: dict | None = None) -> list[float]:
    """What a user would write by hand: the data on the device, shuffle, forward, backward, step (`text`: where a
    text table's token ids sit, tasks/common/tables.py text_layout)."""
    import torch
    import torch.nn.functional as F

    from tasks.common.dataset import load_split
    from tasks.nn.device import resolve_device, seed_everything, set_threads
    from tasks.nn.models import build_model

    cfg = params.train
    device = resolve_device(cfg.device)
    set_threads(cfg.threads, device)
    seed_everything(params.base.seed)
    split = load_split(prepared / "train")
    x, y = torch.from_numpy(np.asarray(split.x)).to(device), torch.from_numpy(np.asarray(split.y)).to(device)
    model = build_model(cfg, tuple(x.shape[1:]), int(y.max()) + 1, text).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rates = []
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(y), device=device)
        start = time.perf_counter()
        for i in range(0, len(y), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(len(y) / (time.perf_counter() - start))
    return rates


def stage(params, root: Path, prepared: Path) -> tuple[list[float], str]:
    import csv

    from tasks.train import train

    result = train(params, root, prepared, root / "train")
    with (root / "train" / "history.csv").open() as handle:
        return [float(row["samples_per_s"]) for row in csv.DictReader(handle)], result.device


def main() -> None:
    from tasks.common.config import AugmentParams, load_params
    from tasks.ingest import ingest
    from tasks.prepare import prepare

    params = load_params(REPO / "params.yaml")
    plain = params.model_copy(update={"train": params.train.model_copy(update={
        "epochs": EPOCHS, "patience": EPOCHS, "augment": AugmentParams(rotation=0, scale=0, shift=0)})})
    augmented = plain.model_copy(update={"train": plain.train.model_copy(update={"augment": params.train.augment})})
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        root = Path(tmp)
        ingest(params.ingest, root, root / "raw")
        prepare(params.prepare, params.base.seed, root / "raw", root / "prepared")
        runs = {"bare": [], "stage": [], "augmented": []}
        for i in range(REPEATS):
            runs["bare"].append(bare_loop(plain, root / "prepared", EPOCHS))
            rates, device = stage(plain, root / f"plain{i}", root / "prepared")
            runs["stage"].append(rates)
            runs["augmented"].append(stage(augmented, root / f"augmented{i}", root / "prepared")[0])
    # the first epoch pays for warm-up (allocations, lazy init) in both: leave it out
    best = {name: max(float(np.median(rates[1:])) for rates in repeats) for name, repeats in runs.items()}
    figures = {"device": device, "batch_size": params.train.batch_size, "model": params.train.model, "epochs": EPOCHS,
               "repeats": REPEATS, "bare_samples_per_s": best["bare"], "stage_samples_per_s": best["stage"],
               "stage_augmented_samples_per_s": best["augmented"], "runs": runs}
    figures["ratio"] = figures["stage_samples_per_s"] / figures["bare_samples_per_s"]
    body = table(["loop", "samples/s (median epoch)", "vs bare"], [
        ["bare PyTorch loop", f"{figures['bare_samples_per_s']:.0f}", "1.00"],
        ["`train` stage, augmentation off", f"{figures['stage_samples_per_s']:.0f}", f"{figures['ratio']:.2f}"],
        ["`train` stage, default augmentation", f"{figures['stage_augmented_samples_per_s']:.0f}",
         f"{figures['stage_augmented_samples_per_s'] / figures['bare_samples_per_s']:.2f}"],
    ])
    note = (f"Default `{params.train.model}` on the bundled digits, batch {params.train.batch_size}, device {device}, "
            f"{EPOCHS} epochs a run, best of {REPEATS} runs' medians over epochs 2–{EPOCHS}. The stage's figure is the `samples_per_s` it logs "
            "to MLflow: time in the training pass only, as the bare loop's. Target: ratio ≥ 0.95.")
    spread = "; ".join(f"{name}: " + ", ".join(f"{np.median(r[1:]):.0f}" for r in repeats) for name, repeats in runs.items())
    note += f" Every run's median samples/s, in order ({spread}), shows the machine's drift."
    save("train_throughput", title="Training throughput: the train stage against a bare PyTorch loop",
         command="python -m benchmarks.train_throughput", markdown=note + "\n\n" + body, figures=figures)
    print(body)


if __name__ == "__main__":
    main()
