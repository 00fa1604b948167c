"""Running the project as a user does, from a test: a copy of the project as a fresh clone has it, the environment
a command runs in there, and starting, polling and stopping the processes a test starts."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from bento.front.supervisor import free_port  # noqa: F401 - the tests' and benchmarks' free loopback port

REPO = Path(__file__).resolve().parents[2]
MLOPS = str(Path(sys.executable).with_name("mlops"))  # the command a user types (installed by make install)


def project_copy(dest: Path) -> Path:
    """The project as a fresh clone would have it (tracked and unignored files), as its own git repository."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    for rel in listed:
        src = REPO / rel
        if src.is_file() and not rel.startswith(("artifacts/", "dvc.lock")):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    git(dest, "init", "-q")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", "copy for a test")
    return dest


def copy_trained(base: Path, dest: Path) -> Path:
    """A copy of a project that has run (`base` holds `project/` and its `bentoml/` store): the same commit, data,
    DVC cache and remote, MLflow store and Bentos, with the store's paths rewritten to the copy, so that what a
    test changes in it (params, data, the registry) changes nothing in `base` or in any other copy."""
    shutil.copytree(base, dest, symlinks=True, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("prefect", ".prefect", ".made"))
    old, new = str((base / "project").resolve()), str((dest / "project").resolve())
    with sqlite3.connect(dest / "project" / "mlflow.db") as db:  # artifact locations are absolute URIs
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for column in [row[1] for row in db.execute(f'PRAGMA table_info("{table}")') if "CHAR" in row[2].upper()
                           or "TEXT" in row[2].upper()]:
                db.execute(f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) WHERE instr("{column}", ?)',
                           (old, new, old))
    return dest / "project"


def git(root: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@localhost",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@localhost"}
    return subprocess.run(["git", *args], cwd=root, env=env, capture_output=True, text=True, check=True).stdout


def project_env(base: Path, prefect_api: str | None = None) -> dict:
    """The environment of a command run in a project copy: its own BentoML and Prefect homes under `base`.

    With `prefect_api` (the session's Prefect server: tests/conftest.py) flows run against that server; without it
    each flow starts Prefect's temporary server, as on a user's first `make run`. Prefect's other settings are the
    project's own (flows/__init__.py), so a test sees what a user sees."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "BENTOML_HOME": str(base / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
        "PREFECT_HOME": str(base / "prefect"),
        "PREFECT_LOCAL_STORAGE_PATH": str(base / "prefect" / "storage"),
    }
    env.pop("PREFECT_API_URL", None)
    if prefect_api:
        env["PREFECT_API_URL"] = prefect_api
    return env


def run_in(root: Path, env: dict, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run a command in `root` as a user would, its output captured."""
    return subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)


def wait_until_healthy(proc: subprocess.Popen, url: str, what: str, timeout_s: float = 120) -> None:
    """Poll `url` until it answers 200; fail with the process's stderr if it exits first."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None, f"{what} exited: {_output(proc)[-3000:]}"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{what} did not answer {url} within {timeout_s:.0f} s"
        time.sleep(0.25)


def _output(proc: subprocess.Popen) -> str:
    if getattr(proc, "log_path", None):
        return Path(proc.log_path).read_text(errors="replace")
    return proc.stderr.read() if proc.stderr else ""


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, and SIGKILL if it is still there after 30 s (a Prefect worker waits for its flow run before exiting)."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


def stop_kept_server(root: Path, timeout_s: float = 60) -> bool:
    """Stop the project's Prefect server a command started and kept (flows/kept_server.py), as its idle time would:
    SIGTERM to its keeper (`.prefect/keeper.lock` holds its pid), then wait for the keeper to exit. False when no
    keeper was running."""
    import signal

    try:
        pid = int((root / ".prefect" / "keeper.lock").read_text().strip() or 0)
        if b"flows.kept_server" not in Path(f"/proc/{pid}/cmdline").read_bytes():  # (not another process's pid)
            return False
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError):
        return False
    deadline = time.monotonic() + timeout_s
    while alive(pid):
        assert time.monotonic() < deadline, f"the keeper ({pid}) did not stop within {timeout_s:.0f} s"
        time.sleep(0.1)
    return True


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, which no one reaped yet, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
