"""What the Prefect flow costs on top of the stages' own work (`python -m benchmarks.orchestration`).

In fresh copies of the project (bundled digits, default params), on one Prefect database created first (as on any
machine after its first run; its creation is timed apart): `mlops run --no-push` cold, then warm (nothing
changed), then warm with `--force-flow`; the same cold run with the stages' warm host turned off
(`PIPELINE_STAGE_HOST=`: every stage in its own process, as before the host); and the stages run directly one
after another (`python -m tasks.<stage>`). The flow logs each stage's wall time under `dvc repro` and the time in
the stage's own code (its `run`); orchestration overhead = cold wall time − the stages' own work (Prefect's
server and bookkeeping, DVC's checks and hashing, process starts and the imports the host did not save).
Goals (issue 35): overhead ≤ 10 % of the cold run, cold run ≤ 2× the train stage, warm run ≤ 5 % of cold.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.record import save, table
from tests.support.processes import MLOPS, project_copy

STAGES = ("ingest", "prepare", "validate", "train", "evaluate", "compress", "package", "promote")
STAGE_LINE = re.compile(r"Task run '(\w+)' - \1: ran in ([\d.]+) s \(its own work ([\d.]+) s\)")


def _env(base: Path, prefect_home: Path | None = None) -> dict:
    base.mkdir(parents=True, exist_ok=True)  # Prefect creates PREFECT_HOME, not its parents: its server would not start
    env = {**os.environ, "BENTOML_HOME": str(base / "bentoml"), "PREFECT_HOME": str(prefect_home or base / "prefect"),
           "BENTOML_DO_NOT_TRACK": "true", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _timed(cmd: list[str], cwd: Path, env: dict) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
    return seconds, done.stdout


def _cold(copy: Path, env: dict) -> dict:
    """A cold flow run: its wall time, and each stage's wall time and own work as the flow logged them."""
    started = time.perf_counter()
    done = subprocess.run([MLOPS, "run", "--no-push"], cwd=copy, env=env, capture_output=True, text=True)
    seconds, out = time.perf_counter() - started, done.stdout + done.stderr  # Prefect logs to stderr
    assert done.returncode == 0, out[-3000:]
    stages = {m.group(1): (float(m.group(2)), float(m.group(3))) for m in STAGE_LINE.finditer(out)}
    assert set(stages) == set(STAGES), f"stages logged: {sorted(stages)}\n{out[-3000:]}"
    return {"wall_s": seconds, "stage_s": {s: t[0] for s, t in stages.items()},
            "work_s": {s: t[1] for s, t in stages.items()}}


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="orchestration-") as tmp:
        direct = project_copy(Path(tmp) / "direct")
        env = _env(Path(tmp) / "direct-homes")
        alone = {s: _timed([sys.executable, "-m", f"tasks.{s}"], direct, env)[0] for s in STAGES}
        # Prefect's database is created once per machine (PREFECT_HOME): timed apart, then shared by the runs.
        prefect_home = Path(tmp) / "prefect"
        database_s, _ = _timed([sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"], Path(tmp),
                               {**env, "PREFECT_HOME": str(prefect_home)})
        hostless = _cold(project_copy(Path(tmp) / "hostless"),
                         {**_env(Path(tmp) / "hostless-homes", prefect_home), "PIPELINE_STAGE_HOST": ""})
        flowed = project_copy(Path(tmp) / "flow")
        env = _env(Path(tmp) / "flow-homes", prefect_home)
        cold = _cold(flowed, env)
        warm, out = _timed([MLOPS, "run", "--no-push"], flowed, env)
        assert "none (everything up to date)" in out, out[-2000:]
        warm_flow, out = _timed([MLOPS, "run", "--no-push", "--force-flow"], flowed, env)
        assert "none (everything up to date)" in out, out[-2000:]
    figures = {**_figures(cold, hostless, alone, warm, warm_flow), "prefect_database_s": database_s}
    print(figures)
    save("orchestration", title="Orchestration: cold run, warm run, overhead",
         command="python -m benchmarks.orchestration", markdown=_markdown(figures, cold, hostless, alone),
         figures=figures)


def _figures(cold: dict, hostless: dict, alone: dict, warm: float, warm_flow: float) -> dict:
    work = sum(cold["work_s"].values())
    return {"cold_s": cold["wall_s"], "train_s": cold["stage_s"]["train"], "work_s": work,
            "overhead_s": cold["wall_s"] - work, "overhead_share": (cold["wall_s"] - work) / cold["wall_s"],
            "cold_per_train": cold["wall_s"] / cold["stage_s"]["train"], "warm_s": warm,
            "warm_share": warm / cold["wall_s"], "warm_flow_s": warm_flow, "hostless_cold_s": hostless["wall_s"],
            "hostless_work_s": sum(hostless["work_s"].values()), "alone_s": sum(alone.values()), "per_stage_s": alone,
            "flow_stage_s": cold["stage_s"], "flow_work_s": cold["work_s"], "hostless_stage_s": hostless["stage_s"]}


def _markdown(f: dict, cold: dict, hostless: dict, alone: dict) -> str:
    def share(x: float) -> str:
        return f"{100 * x / f['cold_s']:.1f} % of cold"

    rows = [["cold run (every stage executes)", f["cold_s"],
             f"{f['cold_per_train']:.2f}× the train stage (goal ≤ 2×)"],
            ["the stages' own work in that run (Σ of each stage's `run`)", f["work_s"], share(f["work_s"])],
            ["orchestration overhead (cold − own work)", f["overhead_s"],
             share(f["overhead_s"]) + " (goal ≤ 10 %)"],
            ["warm run (nothing changed, no stage executes)", f["warm_s"], share(f["warm_s"]) + " (goal ≤ 5 %)"],
            ["warm run with `--force-flow` (a Prefect flow run that skips every stage)", f["warm_flow_s"],
             share(f["warm_flow_s"])],
            ["cold run, warm host off (`PIPELINE_STAGE_HOST=`: each stage its own process)", f["hostless_cold_s"],
             f"{f['hostless_cold_s'] / f['cold_s']:.2f}× the run with the host"],
            ["the stages alone (`python -m tasks.<stage>` in turn, no flow)", f["alone_s"], ""],
            ["creating Prefect's database (a machine's first run only; `prefect server database upgrade`)",
             f["prefect_database_s"], "not in the runs above"]]
    per_stage = [[s, cold["stage_s"][s], cold["work_s"][s], hostless["stage_s"][s], hostless["work_s"][s], alone[s]]
                 for s in STAGES]
    return "\n".join([
        "`mlops run --no-push` in fresh copies of the project (bundled digits, default params), on a Prefect database "
        "created beforehand (timed apart): cold, then warm, then warm with `--force-flow`; a cold run with the "
        "stages' warm host off; the stages alone in another copy. Wall times include every process's start-up and "
        "imports and the Prefect server each command starts for itself. A "
        "stage's own work is the time in its `run` as the stage command measures it (no interpreter start, no "
        "DVC). With nothing to do, `mlops run` checks `dvc status` once and returns without starting Prefect.",
        "", table(["what", "seconds", ""], rows), "",
        table(["stage", "in the flow (s)", "its own work (s)", "host off: in the flow (s)", "host off: own work (s)",
               "alone (s)"], per_stage),
    ])


if __name__ == "__main__":
    main()
