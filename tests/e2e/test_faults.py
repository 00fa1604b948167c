"""Faults on a copy of the session's trained project: a run killed (SIGKILL to its process group, as an OOM killer
or `kill -9` would) while it ran with overrides; the next ordinary run puts the user's params.yaml back byte for
byte, says so, and finishes the job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tasks.common.params_journal import JOURNAL
from tests.support.processes import MLOPS, copy_trained, project_env, run_in


@pytest.fixture(scope="module")
def project(trained_project, tmp_path_factory, prefect_api):
    base = tmp_path_factory.mktemp("e2e-faults")
    return copy_trained(trained_project, base), project_env(base, prefect_api)


def _killed_at(root: Path, env: dict, args: list[str], sign: str, wait_for: Path | None = None) -> list[str]:
    """`mlops <args>` in `root`, SIGKILLed (its process group, as an OOM killer or `kill -9` would) at the first
    output line holding `sign` (once `wait_for` exists, when given); the lines it printed. Fails when `sign` never
    came."""
    import time

    run = subprocess.Popen([MLOPS, *args], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, start_new_session=True)
    seen = []
    try:
        for line in run.stdout:
            seen.append(line)
            if sign in line:
                deadline = time.monotonic() + 300
                while wait_for is not None and not wait_for.is_file() and time.monotonic() < deadline:
                    time.sleep(0.1)
                os.killpg(run.pid, signal.SIGKILL)
                break
    finally:
        run.kill()
        run.wait()
    assert any(sign in line for line in seen), f"never printed {sign!r}: " + "".join(seen[-40:])
    return seen


def _running(root: Path) -> list[str]:
    """The MLflow runs of the project's store still RUNNING."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    return [r.info.run_id for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
            if r.info.status == "RUNNING"]


def test_a_run_killed_with_overrides_leaves_params_yaml_as_the_user_had_it(project):
    """SIGKILL mid-training (its first epoch checkpointed) of a run with an override. The next plain run puts
    params.yaml back, trains anew (other params: nothing to resume) and ends the killed run's MLflow run KILLED."""
    import json

    import mlflow

    root, env = project
    original = (root / "params.yaml").read_bytes()
    _killed_at(root, env, ["run", "--no-push", "--set", "train.epochs=30"], "Running stage 'train'",
               wait_for=root / "artifacts/train/last.pt")  # an epoch checkpointed: the MLflow run is open
    assert (root / JOURNAL).is_file() and (root / "params.yaml").read_bytes() != original  # what the kill left
    killed = json.loads((root / "artifacts/train/run.json").read_text())["run_id"]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    assert client.get_run(killed).info.status == "RUNNING"  # as the kill left it
    after = run_in(root, env, MLOPS, "run", "--no-push")
    assert after.returncode == 0, after.stdout[-3000:] + after.stderr[-3000:]
    assert "params.yaml restored byte for byte" in after.stdout and '"train.epochs": 30' in after.stdout
    assert (after.stdout + after.stderr).count("params.yaml restored byte for byte") == 1  # said once
    assert f"MLflow run {killed} (process" in after.stdout + after.stderr  # said, as the journal's restore is
    assert (root / "params.yaml").read_bytes() == original and not (root / JOURNAL).exists()
    status = run_in(root, env, "dvc", "status")
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout  # the job finished
    assert client.get_run(killed).info.status == "KILLED"
    assert not _running(root) and not list((root / ".mlflow-open").glob("*.json")), _running(root)


def test_a_machine_whose_bentoml_store_lacks_the_champion_scores_with_it_from_the_registry(project, tmp_path):
    """A new worker pointed at the project's tracking store: its empty BentoML store gets the champion's shipped model
    from the registry (the compressed ONNX version and the stored model's metadata), once, and scores with it."""
    from tests.integration.test_score import _digit_folder

    root, env = project
    empty = {**env, "BENTOML_HOME": str(tmp_path / "new-machine-bentoml")}
    folder = _digit_folder(tmp_path / "tonight", 40, extra=False)
    done = run_in(root, empty, MLOPS, "score", "--input", str(folder), "--no-push")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "imported from the registry (digits-classifier-compressed v1)" in done.stdout + done.stderr
    assert "40 of 40 rows scored, 0 quarantined, with digits-classifier v1" in done.stdout
    assert list((tmp_path / "new-machine-bentoml" / "models" / "digits-classifier").iterdir())
    again = run_in(root, empty, MLOPS, "score", "--input", str(_digit_folder(tmp_path / "later", 20, extra=False)),
                   "--no-push")
    assert again.returncode == 0 and "imported" not in again.stdout + again.stderr, again.stderr[-2000:]


def test_a_machine_whose_bentoml_store_lacks_the_champion_serves_it_built_from_the_registry(project, tmp_path):
    """`mlops serve` on a new server pointed at the project's tracking store: its empty BentoML store gets the
    champion's shipped model from the registry and a Bento of this project's service built around it, which the
    front serves; the Bento answers /metadata as the champion."""
    import httpx

    from tests.support.processes import free_port, stop, wait_until_healthy

    root, env = project
    empty = {**env, "BENTOML_HOME": str(tmp_path / "new-server-bentoml")}
    port, admin = free_port(), free_port()
    log_path = tmp_path / "front.log"
    with open(log_path, "w") as log:
        front = subprocess.Popen([MLOPS, "serve", "--root", str(root), "--port", str(port), "--admin-port",
                                  str(admin)], cwd=root, env=empty, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_healthy(front, f"http://127.0.0.1:{admin}/healthz", "the front", timeout_s=180)
        about = httpx.get(f"http://127.0.0.1:{port}/metadata", timeout=30).json()
        assert about["model_version"] == "1" and about["variant"]
        assert list((tmp_path / "new-server-bentoml" / "bentos").iterdir())
    finally:
        stop(front)
    printed = log_path.read_text()
    assert "had no Bento on this machine: built" in printed and "Traceback" not in printed, printed[-3000:]


def test_a_run_killed_while_pushing_its_data_pushes_it_at_the_next_run(project):
    """SIGKILL as the data versions go to the DVC remote: the next plain run sees them unpushed, pushes them (every
    stage up to date) and ends with the remote in sync, the workspace free and no MLflow run left RUNNING."""
    import shutil

    from filelock import FileLock

    from flows.dag import unpushed

    root, env = project
    remote = root / run_in(root, env, "dvc", "remote", "list").stdout.split()[1]  # relative to the project, or not
    shutil.rmtree(remote, ignore_errors=True)  # whatever earlier tests pushed: this run has everything to push
    assert unpushed(root)
    _killed_at(root, env, ["run"], "pushing the data versions to the DVC remote")
    after = run_in(root, env, MLOPS, "run")
    assert after.returncode == 0, after.stdout[-3000:] + after.stderr[-3000:]
    assert "data versions pushed" in after.stdout + after.stderr and "Traceback" not in after.stdout + after.stderr
    assert not unpushed(root)
    status = run_in(root, env, "dvc", "status")
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout
    with FileLock(str(root / ".pipeline.lock")).acquire(timeout=0):
        pass
    assert not _running(root), _running(root)


def test_a_roll_out_cut_short_makes_the_next_run_start_a_flow_that_ends_it(project):
    """What a run killed while the serving front switched Bentos leaves (`.serving/rollout.pending`, written before
    the front is asked): the next `mlops run` does not stop at "everything up to date" but starts the flow, whose
    roll-out step finishes or, with no front configured any more, drops it; the run after is up to date again."""
    root, env = project
    before = run_in(root, env, MLOPS, "run", "--no-push")  # the push test before this one left everything done
    assert before.returncode == 0 and "Everything up to date" in before.stdout, before.stdout[-2000:]
    (root / ".serving").mkdir(exist_ok=True)
    (root / ".serving/rollout.pending").write_text('{"bento": "digits_classifier:cut-short", "version": "1"}')
    after = run_in(root, env, MLOPS, "run", "--no-push")
    assert after.returncode == 0, after.stdout[-3000:] + after.stderr[-3000:]
    assert "Everything up to date" not in after.stdout and "Pipeline finished" in after.stdout
    assert not (root / ".serving/rollout.pending").exists()
    again = run_in(root, env, MLOPS, "run", "--no-push")
    assert again.returncode == 0 and "Everything up to date" in again.stdout, again.stdout[-2000:]


def test_a_run_killed_mid_roll_out_leaves_the_front_serving_and_the_next_run_finishes_the_switch(project):
    """A team's setting (`rollout.admin_url` in params.yaml, a front serving the champion's Bento) and a change that
    rebuilds the Bento; SIGKILL once the run has asked the front to switch (`.serving/rollout.pending` written).
    The front keeps answering throughout; the next plain run finds the marker, starts a flow whose stages are all
    up to date and ends the switch: the front serves the new Bento, switched once, and nothing is left behind."""
    import httpx
    import yaml

    from tests.support.processes import free_port, stop, wait_until_healthy

    root, env = project
    original = (root / "params.yaml").read_bytes()
    served = json.loads((root / "artifacts/package/bento.json").read_text())["bento_tag"]
    port, admin_port = free_port(), free_port()
    admin = f"http://127.0.0.1:{admin_port}"
    front = subprocess.Popen([MLOPS, "serve", "--port", str(port), "--admin-port", str(admin_port)], cwd=root, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_healthy(front, f"{admin}/healthz", "the serving front")
        auth = {"Authorization": f"Bearer {(root / '.serving/admin-token').read_text()}"}
        params = yaml.safe_load(original)
        params["rollout"]["admin_url"] = admin
        params["compress"]["latency_repeats"] = 20  # a new compressed model: a new Bento for the same champion
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        _killed_at(root, env, ["run", "--no-push"], "promote: ran in", wait_for=root / ".serving/rollout.pending")
        rebuilt = json.loads((root / "artifacts/package/bento.json").read_text())["bento_tag"]
        assert rebuilt != served and (root / ".serving/rollout.pending").is_file()
        answer = httpx.post(f"http://127.0.0.1:{port}/predict", json={"images": [[[0.0] * 8] * 8]}, timeout=60)
        assert answer.status_code == 200  # the front answered with the run killed under it
        after = run_in(root, env, MLOPS, "run", "--no-push")
        assert after.returncode == 0, after.stdout[-3000:] + after.stderr[-3000:]
        assert "Everything up to date" not in after.stdout and "stages run:      none" in after.stdout
        status = httpx.get(f"{admin}/status", headers=auth, timeout=30).json()
        answer = httpx.post(f"http://127.0.0.1:{port}/predict", json={"images": [[[0.0] * 8] * 8]}, timeout=60)
        dvc_status = run_in(root, env, "dvc", "status").stdout
    finally:
        stop(front)
        (root / "params.yaml").write_bytes(original)
    assert status["bento"] == rebuilt and answer.headers["x-bento-tag"] == rebuilt
    switches = [(h["from"], h["to"]) for h in status["history"] if not h.get("already_serving")]
    assert switches == [(None, served), (served, rebuilt)]  # its start, then one switch however often it was asked
    assert not (root / ".serving/rollout.pending").exists() and not _running(root), _running(root)
    assert "Data and pipelines are up to date." in dvc_status, dvc_status


# Each stage is cut short once, inside it, where a kill leaves the most to mend (its outputs written but not yet
# recorded by DVC, a version registered, a fine-tuning under way); the first and the last stage at their start too
# (DVC has just removed the stage's outputs and holds its lock). A kill at the start of a stage in between leaves
# the same state as at the first one's (the stages before recorded, this one's outputs removed, its lock held) but
# for which stage it is: those six were dropped to keep the suite's time (six runs, about 100 s of it).
KILL_POINTS = [  # (what is cut short, the line after which the process group is killed)
    ("ingest, starting", "Running stage 'ingest'"), ("ingest, outputs written", "tasks.ingest.stage: ingested"),
    ("prepare, outputs written", "tasks.prepare.stage: split"), ("validate, checked", "tasks.validate.stage:"),
    ("train, trained", "tasks.train.stage: trained"), ("evaluate, version registered", "of model 'digits-classifier'."),
    ("compress, fine-tuning the pruned model", "fine-tune"),
    ("package, compressed version registered", "of model 'digits-classifier-compressed'."),
    ("promote, starting", "Running stage 'promote'"),  # (this run's model is not promoted: no serving check)
]


def _end_state(root: Path) -> dict:
    """What a finished run leaves that a kill must not change: data versions (DVC's hashes), the weights, the trained
    and evaluated figures, the gate's decision, the variant shipped, the promotion, the registry's versions and
    aliases. (Not latencies, times or Bento tags: those differ between any two runs.)"""
    import hashlib
    import json

    import mlflow
    import torch
    import yaml

    read = lambda rel: json.loads((root / "artifacts" / rel).read_text())  # noqa: E731
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    outs = {out["path"]: out.get("md5") for stage in ("ingest", "prepare") for out in lock[stage]["outs"]}
    state = torch.load(root / "artifacts/train/model.pt", weights_only=True)["state_dict"]  # (the file holds run ids)
    weights = hashlib.md5(b"".join(state[k].numpy().tobytes() for k in sorted(state))).hexdigest()
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    gate, promotion = read("evaluate/gate.json"), read("promote/promotion.json")
    trained = read("train/metrics.json")
    return {"dvc outs": outs, "weights": weights,
            "train": {k: trained[k] for k in ("best_epoch", "epochs_run", "val_loss", "val_accuracy")},
            "evaluate": read("evaluate/metrics.json"), "gate": {k: gate[k] for k in ("passed", "reason", "version")},
            "shipped variant": read("compress/choice.json")["variant"],
            "promotion": {k: promotion[k] for k in ("promoted", "version")},
            "versions": sorted(int(v.version) for v in client.search_model_versions("name='digits-classifier'")),
            "aliases": dict(client.get_registered_model("digits-classifier").aliases)}


def test_a_run_killed_at_each_stage_in_turn_ends_like_one_never_killed(project, tmp_path):
    """One run with overrides (an ingest param and the split among them: every stage runs), SIGKILLed (process group)
    at each point of KILL_POINTS in turn (inside each stage: after its outputs are written but before DVC records
    them, right after a version is registered, while fine-tuning; the first and last stage's start), each time
    started again; the last attempt finishes. Its end state equals, field by
    field, that of the same run never killed, in a copy of the project made before the first kill; and it is a
    finished run's: no MLflow run left RUNNING, no half-built Bento, the workspace lock free,
    params.yaml byte-identical and no journal left."""
    import json

    import mlflow
    from filelock import FileLock

    root, env = project
    original = (root / "params.yaml").read_bytes()
    overrides = ["--set", "train.epochs=4", "--set", "compress.finetune_epochs=2", "--set",
                 "compress.latency_repeats=3", "--set", "compress.calibrations=[minmax]", "--set",
                 "compress.prune_ratio=0.5", "--set", "ingest.max_table_mb=1000", "--set", "prepare.val_fraction=0.16"]
    twin = copy_trained(root.parent, tmp_path / "twin")  # the same state, never killed
    never_killed = run_in(twin, project_env(tmp_path / "twin", env.get("PREFECT_API_URL")), MLOPS, "run",
                          "--no-push", *overrides)
    assert never_killed.returncode == 0, never_killed.stdout[-3000:] + never_killed.stderr[-3000:]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    before = {v.version for v in client.search_model_versions("name='digits-classifier'")}
    for _, sign in KILL_POINTS:  # (the point named in KILL_POINTS; the failure shows its line)
        _killed_at(root, env, ["run", "--no-push", *overrides], sign)
    done = run_in(root, env, MLOPS, "run", "--no-push", *overrides)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr
    assert (root / "params.yaml").read_bytes() == original and not (root / JOURNAL).exists()
    with FileLock(str(root / ".pipeline.lock")).acquire(timeout=0):  # nobody holds the workspace
        pass
    versions = client.search_model_versions("name='digits-classifier'")
    new = {v.version for v in versions} - before
    assert len(new) == 1 and len(versions) == len(before) + 1, sorted(v.version for v in versions)
    compressed = client.search_model_versions("name='digits-classifier-compressed'")
    assert len([v for v in compressed if v.tags.get("source.version") in {str(n) for n in new}]) == 1  # nor here
    gate = json.loads((root / "artifacts/evaluate/gate.json").read_text())
    aliases = client.get_registered_model("digits-classifier").aliases
    promotion = json.loads((root / "artifacts/promote/promotion.json").read_text())
    assert str(aliases["champion"]) == (gate["version"] if promotion["promoted"] else gate["previous_champion"])
    assert not _running(root), _running(root)
    bentos = run_in(root, env, "bentoml", "list", "-o", "json")
    tags = [b["tag"] for b in json.loads(bentos.stdout)]
    assert json.loads((root / "artifacts/package/bento.json").read_text())["bento_tag"] in tags
    assert _end_state(root) == _end_state(twin)
