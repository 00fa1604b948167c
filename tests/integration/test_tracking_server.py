"""The pipeline against a real `mlflow server` on a loopback port, read back over its REST API.

Once with a SQLite backend, once with PostgreSQL (the session's throwaway cluster made with initdb: conftest.py).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import yaml

from tests.support.processes import MLOPS, project_copy, project_env, run_in
from tests.support.servers import mlflow_server
MODEL = "digits-classifier"
EPOCHS = 4
HTTP = httpx.Client(timeout=60)


def _pipeline_against(server: str, base: Path, prefect_api: str) -> Path:
    root = project_copy(base / "project")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"].update(epochs=EPOCHS, patience=EPOCHS)  # the server is under test here, not the accuracy
    params["evaluate"]["min_accuracy"] = 0.5
    params["compress"].update(finetune_epochs=1, calibrations=["minmax"], latency_repeats=3)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**project_env(base, prefect_api), "MLFLOW_TRACKING_URI": server}
    done = run_in(root, env, MLOPS, "run", "--no-push")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert not (root / "mlflow.db").exists()  # everything went to the server
    return root


def _read_back_over_rest(server: str, root: Path) -> None:
    import json

    api = f"{server}/api/2.0/mlflow"
    run_id = json.loads((root / "artifacts/train/run.json").read_text())["run_id"]
    run = HTTP.get(f"{api}/runs/get", params={"run_id": run_id}).raise_for_status().json()["run"]
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert metrics["test_accuracy"] > 0.5 and params["train.epochs"] == str(EPOCHS)
    assert {"git.commit", "params.md5", "data.train.md5", "prefect.flow_run_id", "compress.chosen", "bento.tag"} <= set(tags)
    listed = HTTP.get(f"{api}/artifacts/list", params={"run_id": run_id, "path": "evaluation"}).raise_for_status().json()
    assert {"evaluation/confusion_matrix.png", "evaluation/reliability.png"} <= {f["path"] for f in listed["files"]}
    model = HTTP.get(f"{api}/registered-models/get", params={"name": MODEL}).raise_for_status().json()["registered_model"]
    assert {a["alias"] for a in model["aliases"]} == {"champion", "challenger"}
    champion = HTTP.get(f"{api}/registered-models/alias", params={"name": MODEL, "alias": "champion"}).raise_for_status()
    version = champion.json()["model_version"]
    assert version["version"] == "1" and version["run_id"] == run_id
    assert {t["key"] for t in version["tags"]} >= {"git.commit", "data.train.md5", "run_id"}
    validation = json.loads((root / "artifacts/validate/report.json").read_text())["mlflow_run_id"]
    docs = HTTP.get(f"{api}/artifacts/list", params={"run_id": validation, "path": "data_docs"}).raise_for_status().json()
    assert "data_docs/index.html" in {f["path"] for f in docs["files"]}


def test_a_sqlite_backed_server_holds_the_run_the_model_and_its_aliases(tmp_path, prefect_api):
    with mlflow_server(f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "artifacts") as server:
        root = _pipeline_against(server, tmp_path, prefect_api)
        _read_back_over_rest(server, root)


def test_a_postgresql_backed_server_does_too(tmp_path, mlflow_on_postgres, prefect_api):
    root = _pipeline_against(mlflow_on_postgres, tmp_path, prefect_api)
    _read_back_over_rest(mlflow_on_postgres, root)
