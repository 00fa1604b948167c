"""The whole pipeline, end to end, on the session's trained project (conftest.py: `mlops run` at the
default params, as a first `make run`): what that run left behind, DVC and a second run agreeing that it is up to
date, lineage, an exact rebuild, and its Bento over HTTP. Each test reads a copy of it; the tests that change
params.yaml or the data are in test_changes.py.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from tests.support.logs import assert_clean_log
from tests.support.processes import MLOPS, copy_trained, free_port, project_env, run_in, stop, wait_until_healthy


@pytest.fixture(scope="module")
def project(trained_project, tmp_path_factory, prefect_api):
    """A copy of the trained project, the environment to run in it (flows against the session's Prefect server),
    and the first run's output."""
    base = tmp_path_factory.mktemp("e2e")
    root = copy_trained(trained_project, base)
    env = project_env(base, prefect_api)
    return root, env, json.loads((trained_project / "run.json").read_text())["stdout"]


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


def test_a_first_run_prints_no_traceback_and_no_error_line(trained_project):
    """The first `mlops run` of a new user, offline, on the project's Prefect server it starts (telemetry off)."""
    run = json.loads((trained_project / "run.json").read_text())
    assert_clean_log(run["stdout"] + run["stderr"], "mlops run")
    assert "Pipeline finished" in run["stdout"]
    # The command started the project's Prefect server in the background, kept for the next commands
    # (flows/kept_server.py; stopped by the fixture as its idle time would), and the flow run is in its database.
    assert "flow runs tracked on the project's Prefect server, starting now: http://127.0.0.1:" in run["stderr"]
    state = trained_project / "project" / ".prefect"
    assert not (state / "server.json").exists() and "stopping the server" in (state / "keeper.log").read_text()
    with sqlite3.connect(state / "prefect.db") as db:
        flows = db.execute("SELECT flow.name, flow_run.state_type FROM flow_run JOIN flow ON flow.id = "
                           "flow_run.flow_id").fetchall()
        logs = [row[0] for row in db.execute("SELECT message FROM log ORDER BY timestamp")]
    assert flows == [("digits-pipeline", "COMPLETED")]
    # Its logs too, up to the last line the flow logs: Prefect sent them before the command's quick exit
    # (cli/__main__.py run) and before its server stopped.
    assert any(line.startswith("promote: ran in") for line in logs) and logs[-1] == "Finished in state Completed()"


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
    env = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}  # as a user's make run: no server given
    done = run_in(root, env, MLOPS, "run")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Everything up to date" in done.stdout and "stages run:      none (everything up to date)" in done.stdout
    assert "Running stage" not in done.stdout and "Prefect server started" not in done.stdout + done.stderr
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
    env = {**env, "BENTO_OPERATOR_KEY": "operator-s3cret"}  # the service's and `mlops drift`'s: /recent_inputs
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
        drifted = run_in(root, env, MLOPS, "drift", "--url", url, "--retrain")
        assert drifted.returncode == 1, drifted.stdout[-3000:] + drifted.stderr[-3000:]
        assert "DRIFTED: pixel_" in drifted.stdout
        # retraining started: the pipeline flow ran as a subflow (nothing changed in the data, so no stage ran)
        assert "retraining: pipeline ran as a subflow: stages run: none (everything up to date)" in drifted.stdout
    finally:
        stop(server)


def test_a_second_run_in_the_same_workspace_is_refused_while_one_holds_it(project):
    from filelock import FileLock

    root, env, _ = project
    with FileLock(str(root / ".pipeline.lock")):  # as a running flow holds it
        done = run_in(root, env, MLOPS, "run", "--no-push")
    assert done.returncode == 1
    assert "another pipeline run is using" in done.stderr and "refused rather than interleaved" in done.stderr
    assert "Running stage" not in done.stdout
