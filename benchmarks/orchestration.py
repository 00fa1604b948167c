"""What the Prefect flow costs on top of the stages' own work (`python -m benchmarks.orchestration`).

In fresh copies of the project (bundled digits, default params), each with no Prefect database, which its first
command copies from the empty one `make install` migrated (flows/prefect_database.py; Prefect's migrations, which
that copy saves, are timed apart): `mlops run --no-push` cold (it starts the project's
Prefect server, kept for the next commands: flows/kept_server.py), then warm (nothing changed), then warm with
`--force-flow` (on that kept server); the same cold run with the project's server already running (kept from an
earlier command), with a server of the command's own instead (`PIPELINE_SERVER_IDLE_MINUTES=0`, the default before),
and with the stages' warm host turned off (`PIPELINE_STAGE_HOST=`: every stage in its own process, as before the
host); and the stages run directly one after another (`python -m tasks.<stage>`). The flow logs each stage's wall
time under `dvc repro` and the time in the stage's own code (its `run`); orchestration overhead = cold wall time −
the stages' own work (Prefect's server and bookkeeping, DVC's checks and hashing, process starts and the imports
the host did not save). Goals (issue 35): overhead ≤ 10 % of the cold run, cold run ≤ 2× the train stage, warm run
≤ 5 % of cold. Each copy's kept server is stopped once its runs are done, so that none runs beside another's.
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
from flows import prefect_database
from tests.support.processes import MLOPS, project_copy, stop_kept_server

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
        tmp = Path(tmp)
        direct = project_copy(tmp / "direct")
        env = _env(tmp / "direct-homes")
        alone = {s: _timed([sys.executable, "-m", f"tasks.{s}"], direct, env)[0] for s in STAGES}
        copies = {name: project_copy(tmp / name) for name in ("flow", "running", "own", "hostless")}
        # The own server's database (PREFECT_HOME) migrated by Prefect, timed: what a new project's first command
        # waits for without the install's copy; the projects' own (.prefect/) are copies of it, as a command makes.
        database_s = _database(tmp / "prefect", env)
        assert prefect_database.template_path().is_file(), "make install migrates the database new projects copy"
        envs = {name: _env(tmp / f"{name}-homes", tmp / "prefect") for name in copies}
        hostless = _in(copies["hostless"], lambda root: _cold(root, {**envs["hostless"], "PIPELINE_STAGE_HOST": ""}))
        own = _cold(copies["own"], {**envs["own"], "PIPELINE_SERVER_IDLE_MINUTES": "0"})
        running = _in(copies["running"], lambda root: _cold(root, envs["running"]), kept_first=envs["running"])
        cold, warm, warm_flow = _in(copies["flow"], lambda root: _cold_then_warm(root, envs["flow"]))
    figures = {**_figures(cold, hostless, alone, warm, warm_flow), "prefect_database_s": database_s,
               "running_cold_s": running["wall_s"], "running_work_s": sum(running["work_s"].values()),
               "own_server_cold_s": own["wall_s"], "running_stage_s": running["stage_s"]}
    print(figures)
    save("orchestration", title="Orchestration: cold run, warm run, overhead",
         command="python -m benchmarks.orchestration", markdown=_markdown(figures, cold, hostless, alone),
         figures=figures)


def _database(home: Path, env: dict) -> float:
    """Seconds to create (migrate) a Prefect database in `home`."""
    home.mkdir(parents=True, exist_ok=True)
    return _timed([sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"], home.parent,
                  {**env, "PREFECT_HOME": str(home)})[0]


def _in(root: Path, runs, kept_first: dict | None = None):
    """`runs(root)` in a copy whose kept Prefect server is stopped afterwards; `kept_first` (an environment): with
    that server started and warm (its host's imports done) before, as an earlier command leaves it."""
    try:
        if kept_first is not None:
            _keep(root, kept_first)
        return runs(root)
    finally:
        stop_kept_server(root)


def _keep(root: Path, env: dict) -> None:
    """Start the project's kept server as a command would (flows/kept_server.py) and wait for its warm host."""
    from tests.support.processes import free_port

    subprocess.Popen([sys.executable, "-m", "flows.kept_server", str(root), str(free_port()), "30"], cwd=root,
                     env={k: v for k, v in env.items() if k != "PREFECT_API_URL"},
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_warm(root)


def wait_warm(root: Path) -> None:
    """Wait until the project's kept server runs and its warm host has made its imports (as minutes after the
    command that started it)."""
    import json

    deadline = time.monotonic() + 180
    record = root / ".prefect" / "server.json"
    while True:
        try:
            host = json.loads(record.read_text()).get("host")
        except (OSError, ValueError):
            host = None
        if host and Path(host + ".warm").exists():
            return
        assert time.monotonic() < deadline, "the kept server or its warm host did not start"
        time.sleep(0.2)


def _cold_then_warm(root: Path, env: dict) -> tuple[dict, float, float]:
    cold = _cold(root, env)
    warm, out = _timed([MLOPS, "run", "--no-push"], root, env)
    assert "none (everything up to date)" in out, out[-2000:]
    warm_flow, out = _timed([MLOPS, "run", "--no-push", "--force-flow"], root, env)
    assert "none (everything up to date)" in out, out[-2000:]
    return cold, warm, warm_flow


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

    rows = [["cold run (every stage executes; it starts the project's Prefect server, kept for the next commands)",
             f["cold_s"], f"{f['cold_per_train']:.2f}× the train stage (goal ≤ 2×)"],
            ["the stages' own work in that run (Σ of each stage's `run`)", f["work_s"], share(f["work_s"])],
            ["orchestration overhead (cold − own work)", f["overhead_s"],
             share(f["overhead_s"]) + " (goal ≤ 10 %)"],
            ["warm run (nothing changed, no stage executes)", f["warm_s"], share(f["warm_s"]) + " (goal ≤ 5 %)"],
            ["warm run with `--force-flow` (a Prefect flow run that skips every stage)", f["warm_flow_s"],
             share(f["warm_flow_s"])],
            ["cold run, the project's Prefect server already running (kept from an earlier command)",
             f["running_cold_s"], f"{f['running_cold_s'] / f['train_s']:.2f}× the train stage; overhead "
             f"{f['running_cold_s'] - f['running_work_s']:.1f} s, "
             f"{100 * (1 - f['running_work_s'] / f['running_cold_s']):.1f} % of it"],
            ["cold run, a Prefect server of the command's own (`PIPELINE_SERVER_IDLE_MINUTES=0`: the default before)",
             f["own_server_cold_s"], ""],
            ["cold run, warm host off (`PIPELINE_STAGE_HOST=`: each stage its own process)", f["hostless_cold_s"],
             f"{f['hostless_cold_s'] / f['cold_s']:.2f}× the run with the host"],
            ["the stages alone (`python -m tasks.<stage>` in turn, no flow)", f["alone_s"], ""],
            ["migrating a new Prefect database (`prefect server database upgrade`): a new project's first command "
             "copies the one `make install` migrated instead", f["prefect_database_s"], "not in the runs above"]]
    per_stage = [[s, cold["stage_s"][s], cold["work_s"][s], hostless["stage_s"][s], hostless["work_s"][s], alone[s]]
                 for s in STAGES]
    return "\n".join([
        "`mlops run --no-push` in fresh copies of the project (bundled digits, default params), each with no Prefect "
        "database yet (its first command copies the one `make install` migrated): cold (it starts the project's "
        "server and keeps it), then warm, then warm with `--force-flow` (on that kept server); cold runs with the "
        "project's server already running, with a server of the command's own, and with the stages' warm host "
        "off; the stages alone in another copy. Wall times include every process's start-up and imports and the "
        "Prefect server a command starts. A stage's own work is the time in its `run` as the stage command "
        "measures it (no interpreter start, no DVC). With nothing to do, `mlops run` checks `dvc status` once and "
        "returns without starting Prefect.",
        "", table(["what", "seconds", ""], rows), "",
        table(["stage", "in the flow (s)", "its own work (s)", "host off: in the flow (s)", "host off: own work (s)",
               "alone (s)"], per_stage),
    ])


if __name__ == "__main__":
    main()
