"""Sweeps: the same 16-trial sweep at parallelism 1 and 2 on the digits (parallel efficiency), the best it found
against params.yaml's defaults, and its front; then `compress.prune_ratio: auto` against the fixed 0.5 on the
digits and on the MNIST-size set (size, latency, accuracy against PyTorch fp32).

Runs the real code (jobs/sweep/, the train and compress stages) in temporary projects.
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


def sweep_case(root: Path, parallel: int, replay: list[dict] | None = None) -> dict:
    """The default `sweep:` section of params.yaml (its space and objectives), 16 trials, `parallel` at a time;
    with `replay`, those trials' parameters in that order (enqueued), so that both runs do the same work."""
    import optuna

    from jobs.sweep import sweep
    from jobs.sweep.report import directions

    params, prepared = prepared_case("digits", root)
    name = f"bench-p{parallel}"
    journal = root / "sweeps" / name / "journal.log"
    journal.parent.mkdir(parents=True)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    if replay:
        study = optuna.create_study(study_name=name, storage=storage, directions=directions(params.sweep.objectives))
        for trial_params in replay:
            study.enqueue_trial(trial_params)
    started = time.perf_counter()
    result = sweep(params, root, prepared, root / "sweeps", trials=TRIALS, parallel=parallel,
                   address=None if parallel == 1 else "local", name=name)
    seconds = time.perf_counter() - started
    if not replay:  # the front's plot, kept beside the figures
        shutil.copyfile(Path(result.folder) / "front.png", RESULTS / "sweep-front.png")
    trials = optuna.load_study(study_name=name, storage=storage).get_trials()
    return {"parallel": parallel, "seconds": seconds, "states": result.states, "objectives": list(result.objectives),
            "replayed": bool(replay), "trial_seconds": sum(r["seconds"] or 0 for r in result.rows),
            "best_fp32_val_accuracy": max((r["fp32_val_accuracy"] or 0) for r in result.rows),
            "picked": result.picked, "front": [r for r in result.rows if r["on_front"]],
            "params": [t.params for t in sorted(trials, key=lambda t: t.number)]}


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
                  f"(objectives {', '.join(one['objectives'])}; its space), {TRIALS} trials on the digits, in process "
                  "(parallel 1, each trial training on both cores) and on a local Dask cluster of two workers "
                  "(parallel 2, each trial on one core). The parallel run replays the first run's 16 trials (their "
                  "parameters enqueued in order), so both do the same work; the front and the best are the first, "
                  "sequential TPE search's. Trial seconds: the sum of every trial's own wall time.", ""]
        rows = [[r["parallel"], f"{r['seconds']:.0f}", f"{r.get('trial_seconds', 0):.0f}",
                 ", ".join(f"{n} {s}" for s, n in sorted(r["states"].items())),
                 f"{r['best_fp32_val_accuracy']:.4f}", f"{r['picked']['accuracy']:.4f}" if r["picked"] else "-",
                 f"{r['picked']['size']:.1f}" if r["picked"] else "-"] for r in (one, two) if r]
        parts += [table(["parallel", "wall s", "trial s", "trials", "best fp32 val acc", "picked: shipped val acc",
                         "picked: KB"], rows), ""]
        if one and two:
            parts.append(f"Parallel efficiency: {one['seconds']:.0f} s / (2 × {two['seconds']:.0f} s) = "
                         f"**{one['seconds'] / (2 * two['seconds']):.2f}** (speed-up {one['seconds'] / two['seconds']:.2f}× on 2 cores). "
                         f"The same trials took {two['trial_seconds'] / one['trial_seconds']:.2f}× their time each on one "
                         "core as on two: training this CNN already uses both cores well, so two trials at once gain "
                         "little on this machine.")
        digits = figures.get("auto", {}).get("digits")
        if digits:
            default = digits["0.5"]["chosen"]
            parts.append(f"Default params (one run of the train and compress stages): fp32 validation accuracy "
                         f"{digits['default_fp32_val_accuracy']:.4f}, shipped {default['val_accuracy']:.4f} at "
                         f"{default['size_bytes'] / 1024:.1f} KB; the sweep's best fp32 validation accuracy "
                         f"{one['best_fp32_val_accuracy']:.4f}, its pick shipped at {one['picked']['accuracy']:.4f} "
                         f"and {one['picked']['size']:.1f} KB.")
        parts += ["", "The front (the sequential run; `benchmarks/results/sweep-front.png`):", "",
                  table(["trial", "shipped val acc", "KB", "variant", "overrides"],
                        [[r["trial"], f"{r['accuracy']:.4f}", f"{r['size']:.1f}", r["shipped"],
                          ", ".join(f"{k.split('.', 1)[1]}={_short(v)}" for k, v in r["overrides"].items())]
                         for r in sorted(one["front"], key=lambda r: -r["accuracy"])]), "",
                  "![the front](benchmarks/results/sweep-front.png)", ""]
    auto = figures.get("auto", {})
    if auto:
        parts += [f"`compress.prune_ratio: auto` against the fixed 0.5, on the same trained model (params.yaml's "
                  "defaults; MNIST-size: the compression benchmark's overrides). Moonshot: ≥ "
                  f"{MOONSHOT['size_ratio']:g}× smaller than fp32 PyTorch with ≤ {MOONSHOT['max_drop'] * 100:.1f} points "
                  "of test accuracy lost. "
                  + " ".join(f"{name}: measured {case['measured_at']} with `{case['command']}`"
                             + (f" ({case['note']})" if case.get("note") else "") + "."
                             for name, case in auto.items()), ""]
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
    parser.add_argument("--auto-data", choices=["digits", "mnist-size"], help="with --only auto: one data set")
    parser.add_argument("--note", default="", help="what else ran on the machine meanwhile, recorded with the figures")
    args = parser.parse_args()
    command = "python -m benchmarks.sweep" + (f" --only {args.only}" if args.only else "") + (
        f" --auto-data {args.auto_data}" if args.auto_data else "")
    figures = previous_figures("sweep") if args.only else {}

    def record() -> None:  # after each case: a long run stopped half-way keeps what it measured
        save("sweep", title="Sweeps: parallel efficiency, the best found, the front; prune_ratio auto",
             command=command, markdown=markdown(figures), figures=figures)

    if args.only in (None, "auto"):
        for name in [args.auto_data] if args.auto_data else ["digits", "mnist-size"]:
            with tempfile.TemporaryDirectory(prefix=f"bench-auto-{name}-") as tmp:
                case = auto_case(name, Path(tmp))
            figures["auto"] = {**figures.get("auto", {}), name: {**case, "command": command, "measured_at": now()}}
            print(f"{name}: 0.5 → {case['0.5']['chosen']['variant']}, auto → {case['auto']['chosen']['variant']}")
            record()
    if args.only in (None, "sweep"):
        runs = {}
        for parallel in (1, 2):  # the second replays the first's trials: the same work, twice the workers
            with tempfile.TemporaryDirectory(prefix=f"bench-sweep-{parallel}-") as tmp:
                runs[str(parallel)] = sweep_case(Path(tmp), parallel, runs["1"]["params"] if parallel == 2 else None)
            print(f"parallel {parallel}: {runs[str(parallel)]['seconds']:.0f} s")
        figures["sweep"] = {**runs, "command": command, "measured_at": now()}
        record()


if __name__ == "__main__":
    main()
