"""What a sweep shows: every trial, the front (accuracy against size and latency), the trial it picks for the
pipeline; as a table, a plot and the parent run's metrics in MLflow."""

from __future__ import annotations

from pathlib import Path

from jobs.sweep.trial import DIRECTIONS

UNITS = {"accuracy": "validation accuracy", "size": "size (KB)", "latency_b1": "latency b1 (ms)",
         "latency_b64": "latency b64 (ms)"}


def trial_rows(study, objectives: tuple[str, ...]) -> list[dict]:
    """One row per trial that has ended, with its objective values, state and the params it tried."""
    from optuna.trial import TrialState

    front = {t.number for t in study.best_trials} if study.trials else set()
    rows = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
        values = dict(zip(objectives, t.values)) if t.state == TrialState.COMPLETE else {}
        rows.append({"trial": t.number, "state": t.state.name.lower(), **{o: values.get(o) for o in objectives},
                     "fp32_val_accuracy": t.user_attrs.get("fp32_val_accuracy"), "on_front": t.number in front,
                     "feasible": _feasible(t), "shipped": (t.user_attrs.get("shipped") or {}).get("variant", ""),
                     "seconds": (t.datetime_complete - t.datetime_start).total_seconds()
                     if t.datetime_complete and t.datetime_start else None,
                     "note": t.user_attrs.get("pruned") or t.user_attrs.get("error") or "",
                     "overrides": t.user_attrs.get("overrides", {}),
                     "mlflow_run_id": t.user_attrs.get("mlflow_run_id", "")})
    return rows


def pick(rows: list[dict], objectives: tuple[str, ...], within: float) -> dict | None:
    """The trial the pipeline gets: on the front and feasible; the most accurate, or with `within` > 0 the best by
    the second objective among those within `within` of the front's best accuracy."""
    front = [r for r in rows if r["on_front"] and r["feasible"] and r["state"] == "complete"]
    if not front:
        return None
    best = max(r["accuracy"] for r in front)
    close = [r for r in front if r["accuracy"] >= best - within]
    rest = [o for o in objectives if o != "accuracy"]
    if within and rest:
        return min(close, key=lambda r: (r[rest[0]], -r["accuracy"]))
    return max(close, key=lambda r: (r["accuracy"], *(-r[o] for o in rest)))


def plot(path: Path, rows: list[dict], objectives: tuple[str, ...], chosen: int | None) -> None:
    """Accuracy against each other objective (one panel each), the front joined up, the picked trial starred;
    one objective: accuracy per trial in the order they finished."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["state"] == "complete"]
    others = [o for o in objectives if o != "accuracy"] or ["trial"]
    fig, axes = plt.subplots(1, len(others), figsize=(6 * len(others), 4.5), squeeze=False)
    for ax, other in zip(axes[0], others):
        for group, style in ((False, {"c": "0.7", "s": 25}), (True, {"c": "tab:blue", "s": 45})):
            chosen_rows = [r for r in done if r["on_front"] == group]
            ax.scatter([r[other] for r in chosen_rows], [r["accuracy"] for r in chosen_rows],
                       label="on the front" if group else "other trials", **style)
        front = sorted((r for r in done if r["on_front"]), key=lambda r: r[other])
        ax.step([r[other] for r in front], [r["accuracy"] for r in front], where="post", c="tab:blue", lw=1)
        for r in done:
            ax.annotate(str(r["trial"]), (r[other], r["accuracy"]), textcoords="offset points", xytext=(4, 3), fontsize=7)
            if r["trial"] == chosen:
                ax.scatter([r[other]], [r["accuracy"]], marker="*", s=250, c="tab:red", label=f"picked: trial {chosen}")
        ax.set_xlabel(UNITS.get(other, other))
        ax.set_ylabel("validation accuracy (shipped variant)" if others != ["trial"] else "validation accuracy")
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle("Sweep: accuracy against " + (" and ".join(UNITS[o] for o in others) if others != ["trial"] else "trial"))
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


def directions(objectives: tuple[str, ...]) -> list[str]:
    return [DIRECTIONS[o] for o in objectives]


def _feasible(trial) -> bool:
    return all(v <= 0 for v in trial.constraints.values())
