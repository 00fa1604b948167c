"""What the Prefect flow costs on top of the stages (`python -m benchmarks.orchestration`).

In two fresh copies of the project: the stages run directly one after another (`python -m tasks.<stage>`,
the compute), and `mlops run --no-push` cold, then warm (nothing changed: every stage up to
date), then warm with `--force-flow`. Orchestration overhead = cold flow wall time − the stages' own wall time.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.record import save, table
from tests.support.processes import MLOPS, project_copy

STAGES = ("ingest", "prepare", "validate", "train", "evaluate", "compress", "package")


def _env(base: Path) -> dict:
    base.mkdir(parents=True, exist_ok=True)  # Prefect creates PREFECT_HOME but not its parents: its server would not start
    env = {**os.environ, "BENTOML_HOME": str(base / "bentoml"), "PREFECT_HOME": str(base / "prefect"),
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


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="orchestration-") as tmp:
        direct = project_copy(Path(tmp) / "direct")
        env = _env(Path(tmp) / "direct-homes")
        stage_seconds = {s: _timed([sys.executable, "-m", f"tasks.{s}"], direct, env)[0] for s in STAGES}
        flowed = project_copy(Path(tmp) / "flow")
        env = _env(Path(tmp) / "flow-homes")
        cold, _ = _timed([MLOPS, "run", "--no-push"], flowed, env)
        warm, out = _timed([MLOPS, "run", "--no-push"], flowed, env)
        assert "none (everything up to date)" in out, out[-2000:]
        warm_flow, out = _timed([MLOPS, "run", "--no-push", "--force-flow"], flowed, env)
        assert "none (everything up to date)" in out, out[-2000:]
    compute = sum(stage_seconds.values())
    figures = {"cold_s": cold, "warm_s": warm, "warm_share": warm / cold, "warm_flow_s": warm_flow, "stages_s": compute,
               "overhead_s": cold - compute, "per_stage_s": stage_seconds}
    print(figures)
    rows = [["cold run (every stage executes)", cold, ""], ["warm run (nothing changed, no stage executes)", warm,
            f"{100 * warm / cold:.1f} % of cold"],
            ["warm run with `--force-flow` (a Prefect flow run that skips every stage)", warm_flow,
             f"{100 * warm_flow / cold:.1f} % of cold"], ["the stages alone (`python -m tasks.<stage>` in turn)", compute, ""],
            ["orchestration overhead (cold − stages)", cold - compute, f"{100 * (cold - compute) / cold:.1f} % of cold"]]
    markdown = "\n".join([
        "`mlops run --no-push` in a fresh copy of the project (bundled digits, default params), "
        "run twice; the stages alone measured in a second fresh copy. Wall times include each process's start-up "
        "and imports; the flow's include starting Prefect's temporary local server. With nothing to do, "
        "`mlops run` checks `dvc status` once and returns without starting Prefect; `--force-flow` "
        "makes it start a flow run anyway (each stage then skipped without spawning DVC).",
        "",
        table(["what", "seconds", ""], rows),
        "",
        table(["stage (alone)", "seconds"], [[s, t] for s, t in stage_seconds.items()]),
    ])
    save("orchestration", title="Orchestration: cold run, warm run, overhead", command="python -m benchmarks.orchestration",
         markdown=markdown, figures=figures)


if __name__ == "__main__":
    main()
