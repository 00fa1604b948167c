"""The pipeline on a copy of the session's trained project, changed as a user changes it: a per-run override (rolled
out behind a serving front), a sweep whose pick goes through the gate, bad data stopped at validate, a changed data
file retrained by `dvc repro`. Tests run in file order and share the copy: the last ones change params.yaml and
the data.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from tests.e2e.test_pipeline import _client
from tests.support.logs import assert_clean_log
from tests.support.processes import MLOPS, copy_trained, free_port, project_env, run_in, stop, wait_until_healthy

# the budgets of a run whose behaviour is under test, not its accuracy (changed data: every stage runs again)
QUICK = {"train": {"epochs": 4, "patience": 4}, "compress": {"finetune_epochs": 1, "latency_repeats": 3,
                                                             "calibrations": ["minmax"]}}


@pytest.fixture(scope="module")
def project(trained_project, tmp_path_factory, prefect_api):
    base = tmp_path_factory.mktemp("e2e-changes")
    root = copy_trained(trained_project, base)
    return root, project_env(base, prefect_api), None


def _edit_params(root: Path, section: str, **values) -> None:
    path = root / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params[section].update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def test_a_per_run_override_reexecutes_only_the_stages_that_read_it_and_leaves_params_yaml_alone(project):
    """...and, with a serving front configured, puts the champion's new Bento behind it without downtime."""
    root, env, _ = project
    before = (root / "params.yaml").read_bytes()
    served = json.loads((root / "artifacts/package/bento.json").read_text())["bento_tag"]
    port, admin_port = free_port(), free_port()
    admin = f"http://127.0.0.1:{admin_port}"
    front = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--port", str(port), "--admin-port",
                              str(admin_port)], cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)  # no --bento: it starts the champion's Bento
    try:
        wait_until_healthy(front, f"{admin}/healthz", "the serving front")
        token_file = root / ".serving/admin-token"  # generated at start; the pipeline's roll-out step reads it
        assert token_file.stat().st_mode & 0o777 == 0o600
        auth = {"Authorization": f"Bearer {token_file.read_text()}"}
        assert httpx.get(f"{admin}/status").status_code == 401
        assert httpx.get(f"{admin}/status", headers=auth).json()["bento"] == served
        done = run_in(root, env, MLOPS, "run", "--no-push", "--set", "compress.latency_repeats=20",
                    "--set", f"rollout.admin_url={admin}")
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        rebuilt = json.loads((root / "artifacts/package/bento.json").read_text())["bento_tag"]
        status = httpx.get(f"{admin}/status", headers=auth).json()
        assert rebuilt != served and status["bento"] == rebuilt and status["history"][-1]["from"] == served
        answer = httpx.post(f"http://127.0.0.1:{port}/predict", json={"images": [[[0.0] * 8] * 8]}, timeout=30)
        assert answer.status_code == 200 and answer.headers["x-bento-tag"] == rebuilt
        skew = httpx.get(f"http://127.0.0.1:{port}/metadata", timeout=30).json()["skew"]
        assert skew["inputs_checked"] == 1  # the front's warm-up requests are not counted as users' inputs
    finally:
        stop(front)
    assert "stages run:      compress, package, promote" in done.stdout
    assert f"serving front:   rolled out {rebuilt}" in done.stdout
    assert (root / "params.yaml").read_bytes() == before  # the override was for that run only
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert lock["compress"]["params"]["params.yaml"]["compress"]["latency_repeats"] == 20  # what the run used
    run_id = json.loads((root / "artifacts/train/run.json").read_text())["run_id"]
    overrides = {"compress.latency_repeats": 20, "rollout.admin_url": admin}
    assert json.loads(_client(root).get_run(run_id).data.tags["pipeline.overrides"]) == overrides
    report = run_in(root, env, "prefect", "artifact", "inspect", "pipeline-report", "--limit", "1", "-o", "json")
    assert report.returncode == 0, report.stdout[-2000:] + report.stderr[-2000:]
    # the newest artifact, as JSON; the temporary server's log lines follow it
    markdown = json.JSONDecoder().raw_decode(report.stdout[report.stdout.index("["):])[0][0]["data"]
    for line in ("**Stages run:** compress, package, promote", "**Overrides:** " + json.dumps(overrides),
                 "validation: passed", "decision: **champion**, version 1: v1 is already champion", "| pruned-int8-minmax-onnx |", "## Bento",
                 f"## Serving\nrolled out {rebuilt} (was {served})"):
        assert line in markdown, line
    # params.yaml is back at 50 while the last run used 20: DVC redoes exactly the stages that read it (compress
    # with 50 ran before, so DVC's run cache restores its outputs instead of running it again)
    repro = run_in(root, env, "dvc", "repro")
    assert repro.returncode == 0, repro.stdout[-3000:] + repro.stderr[-3000:]
    redone = [s for s in ("ingest", "prepare", "validate", "train", "evaluate", "compress", "package", "promote")
              if f"Running stage '{s}'" in repro.stdout or f"Stage '{s}' is cached" in repro.stdout]
    assert redone == ["compress", "package", "promote"]


def test_a_sweeps_pick_goes_through_the_gate_and_a_worse_one_is_not_promoted(project):
    """A sweep on a local cluster whose every trial is poor (one epoch at a tiny learning rate): its pick becomes
    the overrides of a normal pipeline run, which the gate refuses; the champion stays, and both runs say why."""
    root, env, _ = project
    client = _client(root)
    champion = client.get_model_version_by_alias("digits-classifier", "champion").version
    before = (root / "params.yaml").read_text()
    _edit_params(root, "sweep", trials=2, parallel=2, objectives=["accuracy"],
                 space={"train.epochs": {"choices": [1]}, "train.lr": {"low": 1.0e-5, "high": 2.0e-5, "log": True}})
    edited = (root / "params.yaml").read_text()
    done = run_in(root, env, MLOPS, "sweep", "--no-push")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert_clean_log(done.stdout + done.stderr, "mlops sweep")
    assert (root / "params.yaml").read_text() == edited  # the pick was an override of that run only
    summary = json.loads(next((root / "sweeps").glob("digits-*/summary.json")).read_text())
    picked = summary["picked"]
    assert picked["overrides"]["train.epochs"] == 1 and sum(summary["states"].values()) == 2
    assert f"from:            sweep {summary['name']}, trial {picked['trial']}" in done.stdout
    assert "stages run:      train, evaluate, compress, package, promote" in done.stdout  # the data stages: pinned
    assert str(client.get_model_version_by_alias("digits-classifier", "champion").version) == str(champion)
    promotion = json.loads((root / "artifacts/promote/promotion.json").read_text())
    assert not promotion["promoted"]
    run_id = json.loads((root / "artifacts/train/run.json").read_text())["run_id"]
    run = client.get_run(run_id)
    assert run.data.tags["pipeline.origin"].startswith(f"sweep {summary['name']}, trial {picked['trial']}")
    assert run.data.params["train.epochs"] == "1"
    assert "not promoted" in client.get_run(summary["parent_run_id"]).data.tags["sweep.pipeline"]
    (root / "params.yaml").write_text(before)


def test_bad_data_stops_at_validate_and_registers_nothing(project):
    root, env, _ = project
    client = _client(root)
    versions_before = len(client.search_model_versions("name='digits-classifier'"))
    model_bytes = (root / "artifacts/train/model.pt").read_bytes()
    source = root / "data/sources/bad"
    source.mkdir(parents=True)
    images = (np.load(root / "data/raw/images.npy"))
    labels = np.load(root / "data/raw/labels.npy")
    labels[labels == 3] = 10  # class 3 gone, a class 10 instead: not the dataset the contract froze
    np.save(source / "images.npy", images)
    np.save(source / "labels.npy", labels)
    _edit_params(root, "ingest", source="arrays", path="data/sources/bad")

    done = run_in(root, env, MLOPS, "run")
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "stage 'validate' failed" in output
    assert "data contract, classes: missing ['3']; new ['10']" in output and "ValidationFailed" in output
    assert "Running stage 'train'" not in output
    assert len(client.search_model_versions("name='digits-classifier'")) == versions_before
    assert str(client.get_model_version_by_alias("digits-classifier", "champion").version) == "1"
    assert (root / "artifacts/train/model.pt").read_bytes() == model_bytes
    assert (root / "artifacts/validate/gx/uncommitted/data_docs/local_site/index.html").is_file()
    failed = client.get_run(json.loads((root / "artifacts/validate/report.json").read_text())["mlflow_run_id"])
    assert failed.info.status == "FAILED" and failed.data.tags["stage"] == "validate"
    assert "data_docs/index.html" in [a.path for a in client.list_artifacts(failed.info.run_id, "data_docs")]


def test_a_changed_data_file_retrains_and_an_unchanged_one_skips_every_stage(project):
    from sklearn.datasets import load_digits

    root, env, _ = project
    source = root / "data/sources/mine"
    source.mkdir(parents=True)
    digits = load_digits()
    images = digits.images.astype(np.float32)
    images[0, 0, 0] = 1.0 - min(images[0, 0, 0], 1.0)  # one pixel of one image, still in range
    np.save(source / "images.npy", images)
    np.save(source / "labels.npy", digits.target)
    _edit_params(root, "ingest", source="arrays", path="data/sources/mine")
    for section, values in QUICK.items():
        _edit_params(root, section, **values)
    stages = ("ingest", "prepare", "validate", "train", "evaluate", "compress", "package", "promote")

    changed = run_in(root, env, "dvc", "repro")
    assert changed.returncode == 0, changed.stdout[-3000:] + changed.stderr[-3000:]
    assert [s for s in stages if f"Running stage '{s}'" in changed.stdout] == list(stages)
    unchanged = run_in(root, env, "dvc", "repro")
    assert unchanged.returncode == 0
    assert [s for s in stages if f"Running stage '{s}'" in unchanged.stdout] == []
    run_id = json.loads((root / "artifacts/train/run.json").read_text())["run_id"]
    tags = _client(root).get_run(run_id).data.tags
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert tags["dvc.data/raw"] == lock["ingest"]["outs"][0]["md5"]  # the new data version is on the run
    assert tags["data.train.md5"]
