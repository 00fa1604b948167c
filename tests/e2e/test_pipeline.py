"""The whole pipeline, end to end, in a temporary copy of the project: the Prefect flow, DVC, MLflow, the Bento over HTTP.

Tests run in file order and share one project: the last ones change params.yaml and the data.
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

from tests.conftest import free_port, project_copy, project_env, run_in, stop, wait_until_healthy

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    base = tmp_path_factory.mktemp("e2e")
    root = project_copy(base / "project")
    (root.parent / "bentoml").mkdir()
    env = project_env(base)
    done = run_in(root, env, sys.executable, "-m", "flows.pipeline")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return root, env, done.stdout


def _client(root: Path):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    return mlflow.MlflowClient()


def _svc_accuracy(root: Path) -> float:
    """scikit-learn's SVC (default RBF kernel) fitted on train+val, scored on the same test split."""
    from sklearn.svm import SVC

    from tasks.common.dataset import load_split

    train, val, test = (load_split(root / "data/prepared" / s) for s in ("train", "val", "test"))
    flat = lambda x: np.asarray(x).reshape(len(x), -1)  # noqa: E731
    svc = SVC().fit(np.concatenate([flat(train.x), flat(val.x)]), np.concatenate([train.y, val.y]))
    return float(svc.score(flat(test.x), test.y))


def test_the_flow_runs_every_stage_and_reaches_the_accuracy_bar(project):
    root, _, stdout = project
    assert "stages run:      ingest, prepare, validate, train, evaluate, compress, package, promote" in stdout
    accuracy = json.loads((root / "artifacts/evaluate/metrics.json").read_text())["accuracy"]
    assert accuracy >= 0.99 and accuracy > _svc_accuracy(root)  # the classic baseline on the same split, beaten
    for line in ("test accuracy:", "model version:   1 (champion", "compressed:", "bento:", "bentoml serve", "mlflow ui"):
        assert line in stdout


def test_dvc_status_is_clean_and_repro_executes_nothing(project):
    root, env, _ = project
    status = run_in(root, env, "dvc", "status")
    assert status.returncode == 0 and "Data and pipelines are up to date." in status.stdout
    repro = run_in(root, env, "dvc", "repro")
    assert repro.returncode == 0
    assert repro.stdout.count("didn't change, skipping") == 8, repro.stdout


def _changed_stages(root: Path, env: dict) -> set[str]:
    status = run_in(root, env, "dvc", "status", "--json")
    assert status.returncode == 0, status.stderr
    return set(json.loads(status.stdout))


@pytest.mark.parametrize("path, old, new, stages", [
    # a default in shared code: every stage imports the config
    ("tasks/common/config.py", "seed: int = 42", "seed: int = 43", {"ingest", "prepare", "validate", "train", "evaluate",
                                                                    "compress", "package", "promote"}),
    # the torch code: only the stages that run it
    ("tasks/nn/models.py", '"""', '"""Edited. ', {"train", "evaluate", "compress", "promote"}),
    # what ships in the Bento: the stages that import it (ingest decodes images with it) and package, which ships it
    ("tasks/shipped/skew.py", '"""', '"""Edited. ', {"ingest", "package"}),
    # a command's help text: no stage
    ("cli/registry.py", "every move of the champion alias", "every move of champion", set()),
    ("flows/summary.py", '"""', '"""Edited. ', set()),
])
def test_dvc_sees_exactly_the_stages_whose_code_changed(project, path, old, new, stages):
    root, env, _ = project
    source = root / path
    original = source.read_text()
    assert old in original
    try:
        source.write_text(original.replace(old, new, 1))
        assert _changed_stages(root, env) == stages
    finally:
        source.write_text(original)
    assert _changed_stages(root, env) == set()


def test_a_second_make_run_with_nothing_changed_runs_no_stage_and_skips_prefect(project):
    root, env, _ = project
    done = run_in(root, env, sys.executable, "-m", "flows.pipeline")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Everything up to date" in done.stdout and "stages run:      none (everything up to date)" in done.stdout
    assert "Running stage" not in done.stdout and "Starting temporary server" not in done.stdout + done.stderr
    assert "model version:   1 (champion" in done.stdout  # the summary still reads the last run's results


def test_data_versions_are_pushed_to_the_local_remote(project):
    root, env, _ = project
    status = run_in(root, env, "dvc", "status", "--cloud")
    assert status.returncode == 0 and "Cache and remote 'local' are in sync." in status.stdout


def test_the_run_and_registered_model_carry_metrics_and_lineage(project):
    root, _, _ = project
    client = _client(root)
    champion = client.get_model_version_by_alias("digits-classifier", "champion")
    assert str(champion.version) == "1"
    run = client.get_run(champion.run_id)
    assert run.data.metrics["test_accuracy"] >= 0.97
    assert {"test_f1_macro", "test_precision_macro", "test_recall_macro", "val_loss", "compress_latency_b64_ms"} <= set(run.data.metrics)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    assert run.data.tags["git.commit"] == commit and champion.tags["git.commit"] == commit
    assert len(run.data.tags["data.test.md5"]) == 32
    assert len(run.data.tags["prefect.flow_run_id"]) == 36  # a UUID: Prefect ran this run
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert run.data.tags["dvc.data/raw"] == lock["ingest"]["outs"][0]["md5"]
    assert run.data.tags["dvc.data/prepared"] == lock["prepare"]["outs"][0]["md5"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert "evaluation/confusion_matrix.png" in artifacts
    assert run.data.tags["test_split.md5"] == run.data.tags["data.test.md5"] and run.data.tags["gate.passed"] == "true"
    assert run.data.tags["readiness.ok"] == "true" and run.data.metrics["readiness_label_agreement"] == 1.0
    # the served variant is in the registry too, linked both ways with the fp32 version, with its measured row
    shipped = client.get_model_version_by_alias("digits-classifier-compressed", "champion")
    assert shipped.tags["source.version"] == "1" and champion.tags["compressed.version"] == str(shipped.version)
    chosen = json.loads((root / "artifacts/compress/choice.json").read_text())["variant"]
    assert shipped.tags["variant"] == chosen and float(shipped.tags["measured.accuracy"]) >= 0.97
    assert chosen in [row["variant"] for row in json.loads(shipped.tags["measured.table"])]
    [move] = registry_history(root)
    assert (move.action, move.from_version, move.to_version) == ("promote", None, "1")


def registry_history(root: Path):
    from tasks.common import registry

    _client(root)
    return registry.history("digits-classifier")


def test_reproduce_rebuilds_the_champion_from_its_commit_and_data_version_exactly(project):
    root, env, _ = project
    done = run_in(root, env, sys.executable, "-m", "cli", "reproduce", "digits-classifier", "champion")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "digits-classifier champion: reproduced exactly (8 metrics compared)" in done.stdout
    assert "test_accuracy" in done.stdout and "DIFFERENT" not in done.stdout
    assert len(run_in(root, env, "git", "worktree", "list").stdout.splitlines()) == 1  # its worktree is gone
    assert str(_client(root).get_model_version_by_alias("digits-classifier", "champion").version) == "1"
    missing = run_in(root, env, sys.executable, "-m", "cli", "reproduce", "digits-classifier", "17")
    assert missing.returncode == 6 and "no version or alias '17'" in missing.stderr


def test_the_built_bento_serves_the_in_process_predictions_over_http(project):
    from tasks.nn.latency import onnx_predictor

    root, env, _ = project
    tag = json.loads((root / "artifacts/package/bento.json").read_text())["bento_tag"]
    port = free_port()
    server = subprocess.Popen(["bentoml", "serve", tag, "--host", "127.0.0.1", "--port", str(port)],
                              cwd=root.parent, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(server, f"{url}/readyz", f"bentoml serve {tag}", timeout_s=60)
        images = (np.load(root / "data/prepared/test/x.npy")[:, 0] * 16.0).astype(np.float32)
        expected = onnx_predictor(root / "artifacts/compress/model.onnx")(images)
        with httpx.Client(base_url=url, timeout=30) as http:
            answers = [http.post("/predict", json={"images": images[i : i + 50].tolist()}) for i in range(0, len(images), 50)]
            assert all(a.status_code == 200 for a in answers)
            answered = sum((a.json() for a in answers), [])
            assert [a["label"] for a in answered] == [str(k) for k in expected.argmax(1)]  # the digits' class names
            probabilities = [[a["probabilities"][str(k)] for k in range(10)] for a in answered]
            np.testing.assert_allclose(np.array(probabilities), expected, atol=1e-5)
            about = http.get("/metadata").json()  # which model this is, as the registry knows it
            assert about["model_version"] == "1" and about["metrics"]["accuracy"] >= 0.99
            assert about["lineage"]["git.commit"] and about["variant"] == json.loads(
                (root / "artifacts/compress/choice.json").read_text())["variant"]
            assert about["skew"]["inputs_checked"] >= len(images) and about["expectations"]["data_version"] == \
                yaml.safe_load((root / "dvc.lock").read_text())["stages"]["prepare"]["outs"][0]["md5"]
            calm = run_in(root, env, sys.executable, "-m", "cli", "drift", "--url", url)
            assert calm.returncode == 0 and "no drift" in calm.stdout, calm.stdout + calm.stderr
            brighter = np.clip(images * 1.6, 0, 16)  # the same digits from a scanner with another gain
            for _ in range(3):  # most of the recent inputs now
                assert http.post("/predict", json={"images": brighter.tolist()}).status_code == 200
        drifted = run_in(root, env, sys.executable, "-m", "flows.drift", "--url", url, "--retrain")
        assert drifted.returncode == 1, drifted.stdout[-3000:] + drifted.stderr[-3000:]
        assert "DRIFTED: pixel_" in drifted.stdout
        # retraining started: the pipeline flow ran as a subflow (nothing changed in the data, so no stage ran)
        assert "retraining: pipeline ran as a subflow: stages run: none (everything up to date)" in drifted.stdout
    finally:
        stop(server)


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
        done = run_in(root, env, sys.executable, "-m", "flows.pipeline", "--no-push", "--set", "compress.latency_repeats=20",
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


def test_a_second_run_in_the_same_workspace_is_refused_while_one_holds_it(project):
    from filelock import FileLock

    root, env, _ = project
    with FileLock(str(root / ".pipeline.lock")):  # as a running flow holds it
        done = run_in(root, env, sys.executable, "-m", "flows.pipeline", "--no-push")
    assert done.returncode == 1
    assert "another pipeline run is using" in done.stderr and "refused rather than interleaved" in done.stderr
    assert "Running stage" not in done.stdout


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
    done = run_in(root, env, sys.executable, "-m", "flows.sweep", "--no-push")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
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

    done = run_in(root, env, sys.executable, "-m", "flows.pipeline")
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
