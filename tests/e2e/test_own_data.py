"""A team's own data, end to end, as a new user brings it: `mlops run --data PATH [--label COL]` on a
CSV with text classes, an RGB JPEG folder whose folders are words, .npy arrays with text labels, IDX files and a CSV
whose classes follow sharp thresholds (where the tree family wins), each to a promoted champion whose Bento, served over HTTP, answers class names. One project is shared, in file order: each
dataset after the first is a switch, refused by the data contract without --new-dataset.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.support import own_data
from tests.support.processes import MLOPS, project_copy, project_env, run_in, stop
from tests.support.servers import serve_last_built
QUICK = ["--set", "train.epochs=30", "--set", "compress.finetune_epochs=5", "--set", "compress.calibrations=[minmax]",
         "--set", "compress.latency_repeats=5", "--no-push"]  # smaller budgets: these datasets are learnt in seconds


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_api):
    base = tmp_path_factory.mktemp("own-data")
    root = project_copy(base / "project")
    sources = root / "data" / "sources"
    made = {"loans": own_data.loans_csv(sources / "loans.csv"), "colours": own_data.colour_folder(sources / "colours"),
            "shapes": own_data.shapes_arrays(sources / "shapes"), "codes": own_data.shapes_idx(sources / "codes"),
            "transactions": own_data.transactions_csv(sources / "transactions.csv")}
    return root, project_env(base, prefect_api), made


def _pipeline(project, *args: str):
    root, env, _ = project
    return run_in(root, env, MLOPS, "run", *args, *QUICK, timeout=1200)


def _champion(root: Path, name: str):
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    return client, client.get_model_version_by_alias(name, "champion")


def test_a_csv_with_text_classes_categories_and_gaps_is_served_by_class_name(project):
    root, _, made = project
    done = _pipeline(project, "--data", "data/sources/loans.csv", "--label", "decision")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "params.yaml: ingest.path = 'data/sources/loans.csv'" in done.stdout
    assert "/predict_rows" in done.stdout and "approved, declined, review" in done.stdout  # the summary's hint
    # default settings took a real export: 30 rows twice (one decided differently), `review` ~1/7 of `declined`
    report = json.loads((root / "artifacts/validate/report.json").read_text())
    assert report["success"] and report["conflicting_labels"]["examples"] == 1
    client, champion = _champion(root, "loans-classifier")  # named from the data, not digits-classifier
    assert json.loads(champion.tags["data.classes"]) == made["loans"]["classes"]
    assert client.get_experiment_by_name("loans-pipeline") is not None
    server, url = serve_last_built(*project[:2])
    try:
        rows = [{"income_k": 85.0, "debt_k": 8.0, "region": "west", "age": 40},
                {"income_k": None, "debt_k": 42.0, "region": None, "age": 33},  # gaps, as the CSV had them
                {"income_k": 55.0, "debt_k": 25.0, "region": "north", "age": 51}]
        answer = httpx.post(f"{url}/predict_rows", json={"rows": rows}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert [a["label"] for a in answer.json()] == ["approved", "declined", "review"]
        assert set(answer.json()[0]["probabilities"]) == {"approved", "declined", "review"}
        about = httpx.get(f"{url}/metadata", timeout=30).json()
        assert about["classes"] == ["approved", "declined", "review"] and about["problem"] == "multiclass"
    finally:
        stop(server)


def test_another_dataset_is_refused_by_the_contract_until_asked_for(project):
    root, _, _ = project
    refused = _pipeline(project, "--data", "data/sources/colours")
    assert refused.returncode == 1
    message = refused.stdout + refused.stderr
    assert "data contract, kind: the contract says 'table', this version has 'images'" in message
    assert "missing ['approved', 'declined', 'review']; new ['ember', 'moss', 'sky']" in message
    assert "--new-dataset" in message
    import mlflow

    names = [m.name for m in mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}").search_registered_models()]
    assert "colours-classifier" not in names  # nothing trained, nothing registered


def test_colour_is_kept_and_a_colour_only_task_is_learnt_and_served(project):
    root, env, _ = project
    done = _pipeline(project, "--data", "data/sources/colours", "--new-dataset")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "data contract archived to" in done.stdout
    assert json.loads((root / "artifacts/evaluate/metrics.json").read_text())["accuracy"] >= 0.95
    meta = json.loads((root / "data/prepared/meta.json").read_text())
    assert meta["channels"] == 3 and meta["image_shape"] == [18, 14] and meta["pixel_max"] == 255.0
    _, champion = _champion(root, "colours-classifier")
    _, loans = _champion(root, "loans-classifier")  # the other dataset's champion is untouched
    assert str(champion.version) == "1" and str(loans.version) == "1"
    server, url = serve_last_built(*project[:2])
    try:
        for name in ("ember", "moss", "sky"):
            upload = own_data.colour_image(name)
            answer = httpx.post(f"{url}/predict_image", files={"image": (f"{name}.jpg", upload, "image/jpeg")}, timeout=30)
            assert answer.status_code == 200 and answer.json()["label"] == name, answer.text
        about = httpx.get(f"{url}/metadata", timeout=30).json()
        assert about["input_shape"] == [18, 14, 3] and about["classes"] == ["ember", "moss", "sky"]
    finally:
        stop(server)


def _served_answers(project, made: dict, wanted: list) -> list[dict]:
    """The served Bento's /predict answers for one image of each label in `wanted`, drawn from the dataset `made`."""
    images, labels = made["images"], made["labels"]
    picks = [int(np.flatnonzero(labels == label)[0]) for label in wanted]
    server, url = serve_last_built(*project[:2])
    try:
        answer = httpx.post(f"{url}/predict", json={"images": images[picks].astype(float).tolist()}, timeout=30)
        assert answer.status_code == 200, answer.text
        return answer.json()
    finally:
        stop(server)


def test_npy_arrays_with_text_labels_are_served_by_class_name(project):
    _, _, made = project
    done = _pipeline(project, "--data", "data/sources/shapes", "--new-dataset")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    answers = _served_answers(project, made["shapes"], ["bar", "cross", "ring"])
    assert [a["label"] for a in answers] == ["bar", "cross", "ring"]


def test_idx_class_codes_are_ordered_as_numbers_and_served_as_names(project):
    root, _, made = project
    done = _pipeline(project, "--data", "data/sources/codes", "--new-dataset")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert json.loads((root / "data/prepared/meta.json").read_text())["classes"] == ["3", "7", "12"]
    answers = _served_answers(project, made["codes"], [12])
    assert answers[0]["label"] == "12" and list(answers[0]["probabilities"]) == ["3", "7", "12"]


def test_a_table_of_sharp_thresholds_ships_gradient_boosted_trees_served_as_in_process(project):
    """`train.model: auto` trains the network and the trees on the same split; the trees win on validation here
    (the classes follow business-rule steps), go through evaluate, compress, package and the serving check, and the
    served Bento answers raw rows with missing values exactly as the shipped model does in this process."""
    from tasks.nn.checkpoint import TreeModel, load_checkpoint
    from tasks.shipped.rows import encode_rows

    root, _, _ = project
    done = _pipeline(project, "--data", "data/sources/transactions.csv", "--label", "decision", "--new-dataset")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "model family:    tree won (validation accuracy: tree 0.9" in done.stdout and "vs network" in done.stdout
    read = lambda rel: json.loads((root / "artifacts" / rel).read_text())  # noqa: E731
    assert read("train/metrics.json")["family"] == "tree" and read("compress/choice.json")["variant"] == "tree-onnx"
    assert "tree" in read("evaluate/leaderboard.json") and "network" not in read("evaluate/leaderboard.json")
    assert read("promote/promotion.json")["promoted"]  # the serving check passed: the Bento answered like the model
    client, champion = _champion(root, "transactions-classifier")
    assert client.get_run(champion.run_id).data.tags["train.family"] == "tree"
    rows = [{"amount": 950.0, "tenure_years": 0.5, "merchant_risk": 5.0, "channel": "web", "hour": 3},  # fraud
            {"amount": 500.0, "tenure_years": 6.0, "merchant_risk": 15.0, "channel": "shop", "hour": 12},  # review
            {"amount": 500.0, "tenure_years": 6.0, "merchant_risk": 25.0, "channel": None, "hour": 12},  # ok
            {"amount": None, "tenure_years": 1.0, "merchant_risk": 55.0, "channel": "phone", "hour": 20},
            {"amount": 820.0, "tenure_years": None, "merchant_risk": None, "channel": None, "hour": 0}]
    model, _ = load_checkpoint(root / "artifacts/train/model.pt")
    assert isinstance(model, TreeModel)
    encoding = json.loads((root / "data/prepared/meta.json").read_text())["encoding"]
    expected = model.predict_proba(encode_rows(rows, encoding))
    classes = ["fraud", "ok", "review"]
    server, url = serve_last_built(*project[:2])
    try:
        answer = httpx.post(f"{url}/predict_rows", json={"rows": rows}, timeout=30)
        assert answer.status_code == 200, answer.text
        served = answer.json()
    finally:
        stop(server)
    assert [a["label"] for a in served] == [classes[k] for k in expected.argmax(1)]
    assert [a["label"] for a in served[:3]] == ["fraud", "review", "ok"]
    np.testing.assert_allclose([[a["probabilities"][c] for c in classes] for a in served], expected, atol=1e-5)


def test_a_grayscale_model_cannot_learn_the_colour_task(tmp_path):
    """What makes the colour fixture worth having: with colour dropped, the classes cannot be told apart."""
    from tasks.common.config import IngestParams, Params
    from tasks.ingest import ingest
    from tasks.prepare import prepare
    from tasks.train import train

    own_data.colour_folder(tmp_path / "colours")
    ingest(IngestParams(path="colours", channels=1), tmp_path, tmp_path / "raw")
    params = Params.model_validate({"train": {"epochs": 25, "patience": 25}})
    prepare(params.prepare, 42, tmp_path / "raw", tmp_path / "prepared")
    result = train(params, tmp_path, tmp_path / "prepared", tmp_path / "train")
    assert result.val_accuracy < 0.8  # three classes: chance is 0.33; colour gets ≥ 0.95 above
