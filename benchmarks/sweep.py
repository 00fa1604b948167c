"""Sweeps: the same 16-trial sweep at parallelism 1 and 2 on the digits (parallel efficiency), the best it found
against params.yaml's defaults, and its front; then `compress.prune_ratio: auto` against the fixed 0.5 on the
digits and on the MNIST-size set (size, latency, accuracy against PyTorch fp32).

Runs the real code (tasks/sweep/, the train and compress stages) in temporary projects.
`python -m benchmarks.sweep [--only sweep|auto]`
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.compression import prepared_case
from benchmarks.record import RESULTS, now, previous_figures, save, table

TRIALS = 16
MOONSHOT = {"size_ratio": 16.0, "max_drop": 0.003}  # ≥ 16× smaller than fp32 PyTorch, ≤ 0.3 points lost


def sweep_case(root: Path, parallel: int) -> dict:
    """The default `sweep:` section of params.yaml (its space and objectives), 16 trials, `parallel` at a time."""
    from tasks.sweep import sweep

    params, prepared = prepared_case("digits", root)
    started = time.perf_counter()
    result = sweep(params, root, prepared, root / "sweeps", trials=TRIALS, parallel=parallel,
                   address=None if parallel == 1 else "local", name=f"bench-p{parallel}")
    seconds = time.perf_counter() - started
    if parallel == 2:  # the front's plot, kept beside the figures
        shutil.copyfile(Path(result.folder) / "front.png", RESULTS / "sweep-front.png")
    return {"parallel": parallel, "seconds": seconds, "states": result.states, "objectives": list(result.objectives),
            "best_fp32_val_accuracy": max((r["fp32_val_accuracy"] or 0) for r in result.rows),
            "picked": result.picked, "front": [r for r in result.rows if r["on_front"]]}


def auto_case(name: str, root: Path) -> dict:
    """One training with params.yaml's defaults, then the compress stage with prune_ratio 0.5 and with auto."""
    from tasks.compress import compress
    from tasks.train import train

    params, prepared = prepared_case(name, root)
    trained = train(params, root, prepared, root / "train")
    case = {"default_fp32_val_accuracy": trained.val_accuracy}
    for ratio in (0.5, "auto"):
        cfg = params.model_copy(update={"compress": params.compress.model_copy(update={"prune_ratio": ratio})})
        started = time.perf_counter()
        result = compress(cfg, root, prepared, root / "train", root / f"compress-{ratio}")
        chosen = next(r for r in result.table if r["variant"] == result.chosen)
        case[str(ratio)] = {"chosen": chosen, "seconds": time.perf_counter() - started,
                            "fp32": result.table[0], "variants": len(result.table)}
    return case


def markdown(figures: dict) -> str:
    parts = []
    runs = figures.get("sweep", {})
    if runs:
        one, two = runs.get("1"), runs.get("2")
        two = two or one
        parts += [f"Measured {runs['measured_at']} with `{runs['command']}`: the default `sweep:` section of params.yaml "
                  f"(objectives {', '.join(two['objectives'])}; its space), {TRIALS} trials on the digits, in process "
                  "(parallel 1, each trial on both cores) and on a local Dask cluster of two single-threaded workers "
                  "(parallel 2, each trial on one core). Each sweep is a fresh study.", ""]
        rows = [[r["parallel"], f"{r['seconds']:.0f}", ", ".join(f"{n} {s}" for s, n in sorted(r["states"].items())),
                 f"{r['best_fp32_val_accuracy']:.4f}", f"{r['picked']['accuracy']:.4f}" if r["picked"] else "-",
                 f"{r['picked']['size']:.1f}" if r["picked"] else "-"] for r in (one, two) if r]
        parts += [table(["parallel", "wall s", "trials", "best fp32 val acc", "picked: shipped val acc",
                         "picked: KB"], rows), ""]
        if one and two:
            parts.append(f"Parallel efficiency: {one['seconds']:.0f} s / (2 × {two['seconds']:.0f} s) = "
                         f"**{one['seconds'] / (2 * two['seconds']):.2f}** (speed-up {one['seconds'] / two['seconds']:.2f}× on 2 cores).")
        digits = figures.get("auto", {}).get("digits")
        if digits:
            default = digits["0.5"]["chosen"]
            parts.append(f"Default params (one run of the train and compress stages): fp32 validation accuracy "
                         f"{digits['default_fp32_val_accuracy']:.4f}, shipped {default['val_accuracy']:.4f} at "
                         f"{default['size_bytes'] / 1024:.1f} KB; the sweep's best fp32 validation accuracy "
                         f"{two['best_fp32_val_accuracy']:.4f}.")
        parts += ["", "The front (parallel 2; `benchmarks/results/sweep-front.png`):", "",
                  table(["trial", "shipped val acc", "KB", "variant", "overrides"],
                        [[r["trial"], f"{r['accuracy']:.4f}", f"{r['size']:.1f}", r["shipped"],
                          ", ".join(f"{k.split('.', 1)[1]}={_short(v)}" for k, v in r["overrides"].items())]
                         for r in sorted(two["front"], key=lambda r: -r["accuracy"])]), "",
                  "![the front](benchmarks/results/sweep-front.png)", ""]
    auto = figures.get("auto", {})
    if auto:
        parts += [f"`compress.prune_ratio: auto` against the fixed 0.5, on the same trained model (params.yaml's "
                  f"defaults; MNIST-size: the compression benchmark's overrides). Measured {auto['measured_at']} with "
                  f"`{auto['command']}`. Moonshot: ≥ {MOONSHOT['size_ratio']:g}× smaller than fp32 PyTorch with ≤ "
                  f"{MOONSHOT['max_drop'] * 100:.1f} points of test accuracy lost.", ""]
        rows = []
        for name in ("digits", "mnist-size"):
            for ratio in ("0.5", "auto"):
                if name not in auto:
                    continue
                c = auto[name][ratio]["chosen"]
                met = c["size_ratio"] >= MOONSHOT["size_ratio"] and c["accuracy_drop"] <= MOONSHOT["max_drop"]
                rows.append([name, ratio, c["variant"], f"{c['size_bytes'] / 1024:.1f}", f"{c['size_ratio']:.1f}×",
                             f"{c['latency_b1_ms']:.3f}", f"{c['latency_b64_ms']:.3f}", f"{c['accuracy']:.4f}",
                             f"{c['accuracy_drop'] * 100:+.2f}", f"{auto[name][ratio]['seconds']:.0f}",
                             "met" if met else "missed"])
        parts += [table(["data", "prune_ratio", "shipped", "KB", "smaller", "b1 ms", "b64 ms", "test acc",
                         "drop (pt)", "compress s", "moonshot"], rows), ""]
    return "\n".join(parts)


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value).replace(" ", "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["sweep", "auto"])
    args = parser.parse_args()
    command = "python -m benchmarks.sweep" + (f" --only {args.only}" if args.only else "")
    figures = previous_figures("sweep") if args.only else {}
    if args.only in (None, "auto"):  # first: the digits' default-params figures are the sweep's reference
        auto = {}
        for name in ("digits", "mnist-size"):
            with tempfile.TemporaryDirectory(prefix=f"bench-auto-{name}-") as tmp:
                auto[name] = auto_case(name, Path(tmp))
            print(f"{name}: 0.5 → {auto[name]['0.5']['chosen']['variant']}, auto → {auto[name]['auto']['chosen']['variant']}")
        figures["auto"] = {**auto, "command": command, "measured_at": now()}
    if args.only in (None, "sweep"):
        runs = {}
        for parallel in (1, 2):
            with tempfile.TemporaryDirectory(prefix=f"bench-sweep-{parallel}-") as tmp:
                runs[str(parallel)] = sweep_case(Path(tmp), parallel)
            print(f"parallel {parallel}: {runs[str(parallel)]['seconds']:.0f} s")
        figures["sweep"] = {**runs, "command": command, "measured_at": now()}
    save("sweep", title="Sweeps: parallel efficiency, the best found, the front; prune_ratio auto",
         command=command, markdown=markdown(figures), figures=figures)


if __name__ == "__main__":
    main()
