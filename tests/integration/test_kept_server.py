"""The project's Prefect server a command starts and keeps for the next commands (flows/kept_server.py): reused
while it runs, never stopped under a process using it, stopped once unused for PIPELINE_SERVER_IDLE_MINUTES."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import httpx

from tests.support.processes import MLOPS, alive, copy_trained, project_env, run_in, stop_kept_server

IDLE_MINUTES = 0.1  # 6 s: the keeper checks every 0.6 s


def _flow_runs(api: str) -> int:
    return httpx.post(f"{api}/flow_runs/count", json={}, timeout=10).raise_for_status().json()


def _answers(api: str) -> bool:
    try:
        return httpx.get(f"{api}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _host_started(root, timeout_s: float = 30):
    """When the keeper started its warm host for commands (the server's record says, once it has one)."""
    import datetime
    import json

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record = json.loads((root / ".prefect" / "server.json").read_text())
        if "code_at" in record:
            return datetime.datetime.fromtimestamp(record["code_at"])
        time.sleep(0.1)
    raise AssertionError("the keeper started no warm host for commands")


def test_the_next_command_reuses_the_kept_server_which_stops_only_once_unused(trained_project, tmp_path):
    root = copy_trained(trained_project, tmp_path / "copy")
    env = {**project_env(tmp_path / "copy"), "PIPELINE_SERVER_IDLE_MINUTES": str(IDLE_MINUTES)}
    try:
        first = run_in(root, env, MLOPS, "run", "--no-push", "--force-flow")
        assert first.returncode == 0, first.stderr[-3000:]
        ui = re.search(r"project's Prefect server, starting now: (http://127\.0\.0\.1:\d+)", first.stderr).group(1)
        api = f"{ui}/api"
        keeper = int((root / ".prefect" / "keeper.lock").read_text())
        # Its warm host for the next commands starts once the command that started the server is done, not while
        # that command's own stages import the same libraries.
        finished = re.findall(r"(\d\d:\d\d:\d\d\.\d+) \| INFO +\| Flow run '[^']+' - Finished in state",
                              first.stderr + first.stdout)[-1]
        host_started = _host_started(root)
        assert host_started.strftime("%H:%M:%S.%f") > finished, (host_started, finished)
        # A process using the server (as a long `mlops run` would) for longer than the idle time: kept meanwhile.
        holder = subprocess.Popen(
            [sys.executable, "-c", "import sys, time; from pathlib import Path; from flows.prefect_server import "
             "use_running; print(use_running(Path('.')), flush=True); time.sleep(float(sys.argv[1]))",
             str(IDLE_MINUTES * 60 * 1.5)], cwd=root, env=env, stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == api
        second = run_in(root, env, MLOPS, "run", "--no-push", "--force-flow")
        assert second.returncode == 0, second.stderr[-3000:]
        assert f"flow runs tracked on the project's Prefect server: {ui}" in second.stderr
        assert _flow_runs(api) == 2  # both runs in the project's database
        holder.wait(timeout=60)
        assert _answers(api) and alive(keeper)  # held past its idle time, then the idle starts
        deadline = time.monotonic() + IDLE_MINUTES * 60 + 30
        while alive(keeper):
            assert time.monotonic() < deadline, "the keeper did not stop its unused server"
            time.sleep(0.2)
        assert not _answers(api) and not (root / ".prefect" / "server.json").exists()
        assert "unused for 0.1 min" in (root / ".prefect" / "keeper.log").read_text()
    finally:
        stop_kept_server(root)
