"""Reproduce (`mlops reproduce MODEL VERSION|ALIAS`): re-run a registered model's pipeline from its own code and data.

The model version's run says where it came from: the git commit, and (logged by `train`) the dvc.lock that
names its data version and the params.yaml it ran with (per-run overrides included). A git worktree at that
commit gets both, `dvc pull data/raw` restores the
raw data version from the DVC remote, and the stages from `prepare` to `evaluate` run there, logging to a
tracking store of their own (the real registry is never touched). The metrics are then compared with the
original run's: on CPU they must match exactly.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tasks.common.errors import PipelineError

STAGES = ("prepare", "validate", "train", "evaluate")
# (name in the original run, file in the reproduction, key in that file)
COMPARED = [
    ("best_best_epoch", "artifacts/train/metrics.json", "best_epoch"),
    ("best_epochs_run", "artifacts/train/metrics.json", "epochs_run"),
    ("best_val_loss", "artifacts/train/metrics.json", "val_loss"),
    ("best_val_accuracy", "artifacts/train/metrics.json", "val_accuracy"),
    ("test_accuracy", "artifacts/evaluate/metrics.json", "accuracy"),
    ("test_f1_macro", "artifacts/evaluate/metrics.json", "f1_macro"),
    ("test_precision_macro", "artifacts/evaluate/metrics.json", "precision_macro"),
    ("test_recall_macro", "artifacts/evaluate/metrics.json", "recall_macro"),
]


class ReproductionError(PipelineError):
    """The model version cannot be reproduced (unknown version, uncommitted code, data not in the remote)."""

    exit_code = 6


@dataclass(frozen=True)
class Comparison:
    metric: str
    original: float
    reproduced: float

    @property
    def equal(self) -> bool:
        return self.original == self.reproduced


def reproduce(root: Path, model: str, ref: str, workdir: Path, allow_dirty: bool = False) -> list[Comparison]:
    """Rebuild `model` version (or alias) `ref` in `workdir` and compare its metrics with the original run's."""
    import mlflow
    import yaml

    from tasks.common import tracking

    tracking.use_store(root)  # the project's store (or MLFLOW_TRACKING_URI); reading only
    client = mlflow.MlflowClient()
    try:
        version = client.get_model_version(model, ref) if ref.isdigit() else client.get_model_version_by_alias(model, ref)
    except mlflow.exceptions.MlflowException as err:
        raise ReproductionError(f"no version or alias '{ref}' of registered model '{model}'") from err
    run = client.get_run(version.run_id)
    tags = run.data.tags
    commit = tags.get("git.commit", "unknown")
    if commit == "unknown":
        raise ReproductionError(f"{model} v{version.version}: its run recorded no git commit")
    if tags.get("git.dirty") == "true" and not allow_dirty:
        raise ReproductionError(f"{model} v{version.version} was trained from uncommitted changes on {commit[:10]}: "
                                "its exact code is gone (--allow-dirty re-runs the commit anyway)")
    lineage = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="lineage",
                                                       dst_path=str(workdir / "downloads")))
    if not (lineage / "dvc.lock").is_file():
        raise ReproductionError(f"{model} v{version.version}: its run logged no dvc.lock (was it run outside `dvc repro`?)")
    tree = workdir / "tree"
    _run(["git", "worktree", "add", "--detach", str(tree), commit], root)
    try:
        shutil.copyfile(lineage / "dvc.lock", tree / "dvc.lock")
        if (lineage / "params.yaml").is_file():  # the params the run used, overrides included
            shutil.copyfile(lineage / "params.yaml", tree / "params.yaml")
        _point_remote_at_original(root, tree)
        locked = _locked_hash(tree, "data/raw")
        if locked != tags.get("dvc.data/raw", locked):
            raise ReproductionError(f"the logged dvc.lock names data/raw {locked}, the run's tag {tags['dvc.data/raw']}")
        _run([sys.executable, "-m", "dvc", "pull", "data/raw"], tree)  # exactly that version, from the remote
        env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PIPELINE_FLOW_RUN_ID")}
        commands = yaml.safe_load((tree / "dvc.yaml").read_text())["stages"]  # that commit's own stage commands
        for stage in STAGES:
            program, *args = shlex.split(commands[stage]["cmd"])
            _run([sys.executable if program == "python" else program, *args], tree, env)
        return [Comparison(name, float(run.data.metrics[name]), float(json.loads((tree / path).read_text())[key]))
                for name, path, key in COMPARED if name in run.data.metrics]
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=root, capture_output=True)


def _point_remote_at_original(root: Path, tree: Path) -> None:
    """A remote given as a relative path (the default `../.dvc-remote`) means the original project's, not the worktree's."""
    import configparser

    config = configparser.ConfigParser()
    config.read(root / ".dvc" / "config")
    for section in config.sections():  # DVC writes them as ['remote "name"'], quotes included
        if section.strip("'").startswith("remote ") and "url" in config[section]:
            url = config[section]["url"]
            if "://" not in url and not os.path.isabs(url):
                name = section.split('"')[1]
                absolute = str((root / ".dvc" / url).resolve())
                _run([sys.executable, "-m", "dvc", "remote", "modify", "--local", name, "url", absolute], tree)


def _locked_hash(tree: Path, path: str) -> str:
    import yaml

    stages = yaml.safe_load((tree / "dvc.lock").read_text())["stages"]
    found = [out["md5"] for stage in stages.values() for out in stage.get("outs", []) if out["path"] == path]
    if not found:
        raise ReproductionError(f"the run's dvc.lock has no entry for {path}")
    return found[0]


def _run(cmd: list[str], cwd: Path, env: dict | None = None) -> None:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode:
        output = (done.stdout + done.stderr).strip()[-1500:]
        raise ReproductionError(f"{' '.join(map(str, cmd[:5]))} failed in {cwd} (exit {done.returncode}): {output}")
