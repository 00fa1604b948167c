"""Text, end to end, as a support team brings it: `mlops run --data PATH --label COL` on a helpdesk export (a free-text
message beside a channel category, duplicates, a 15 % minority queue), then a folder of .txt files per queue with
one file in cp1252; each to a promoted champion whose Bento, served over HTTP, answers queue names for new text.
One project, in file order (the folder is a switch of dataset)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import onnxruntime
import pytest

from tasks.shipped.text import takes_any_length
from tests.support import own_data
from tests.support.mutants import mutants
from tests.support.processes import MLOPS, project_copy, project_env, run_in, stop
from tests.support.servers import serve_last_built

QUICK = ["--set", "train.epochs=15", "--set", "compress.calibrations=[minmax]", "--set", "compress.latency_repeats=5",
         "--set", "compress.prune_ratio=0", "--set", "promote.readiness_samples=64", "--no-push"]  # learnt in seconds
NEW = {"my invoice shows a second charge, I want a refund of the payment": "billing",
       "The APP crashes with an error after the password reset, login broken": "technical",
       "parcel not arrived, the courier tracking says delivery delayed": "shipping"}


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_api):
    base = tmp_path_factory.mktemp("text")
    root = project_copy(base / "project")
    sources = root / "data" / "sources"
    made = {"tickets": own_data.tickets_csv(sources / "tickets.csv"), "mail": own_data.tickets_folder(sources / "mail")}
    return root, project_env(base, prefect_api), made


def _pipeline(project, *args: str):
    root, env, _ = project
    return run_in(root, env, MLOPS, "run", *args, *QUICK, timeout=1200)


def test_a_helpdesk_export_with_a_text_column_is_learnt_and_served_by_queue_name(project):
    root, _, made = project
    done = _pipeline(project, "--data", "data/sources/tickets.csv", "--label", "queue")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    meta = json.loads((root / "data/prepared/meta.json").read_text())
    assert meta["columns"] == {"message": "text", "channel": "categorical"}  # inferred, not one-hot per message
    assert meta["encoding"]["text"][0]["length"] <= 32 and meta["encoding"]["vocab_size"] > 50
    board = json.loads((root / "artifacts/evaluate/leaderboard.json").read_text())
    assert "tfidf_logistic_regression" in board and "gradient_boosting" in board  # the channel beside the text
    metrics = json.loads((root / "artifacts/evaluate/metrics.json").read_text())
    assert metrics["f1_macro"] > 0.8 and metrics["balanced_accuracy"] > 0.8, metrics
    report = json.loads((root / "artifacts/validate/report.json").read_text())
    assert report["contract"]["columns"]["message"] == "text"
    checked = {(c["expectation"], c["column"]) for c in report["checks"] if c.get("column")}
    assert ("expect_column_mean_to_be_between", "message__unknown_share") in checked
    gate = json.loads((root / "artifacts/evaluate/gate.json").read_text())
    assert gate["passed"], gate
    shipped = onnxruntime.InferenceSession(str(root / "artifacts/compress/model.onnx"))
    assert takes_any_length(shipped), shipped.get_inputs()[0].shape  # served rows are cut after their last token
    server, url = serve_last_built(*project[:2])
    try:
        rows = [{"message": text, "channel": "email"} for text in NEW]
        answer = httpx.post(f"{url}/predict_rows", json={"rows": rows}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert [a["label"] for a in answer.json()] == list(NEW.values())
        assert set(answer.json()[0]["probabilities"]) == set(made["tickets"]["classes"])
        refused = httpx.post(f"{url}/predict_text", json={"texts": list(NEW)}, timeout=30)
        assert refused.status_code == 404 and "/predict_rows" in refused.json()["error"]  # the channel is needed too
        empty = httpx.post(f"{url}/predict_rows", json={"rows": [{"message": None, "channel": "chat"}]}, timeout=30)
        assert empty.status_code == 200, empty.text  # no text: answered from the channel, as the rule says
    finally:
        stop(server)
    _scored_in_batch(project)


def _scored_in_batch(project) -> None:
    """`mlops score` on a drop of new tickets: scored with the champion, an empty and an over-long text set aside."""
    import pandas as pd

    root, env, _ = project
    drop = own_data.tickets(60, seed=9).drop(columns=["queue"])
    drop.loc[0, "message"], drop.loc[1, "message"] = "   ", "refund " * 5000
    drop.to_csv(root / "tonight.csv", index=False)
    done = run_in(root, env, MLOPS, "score", "--input", str(root / "tonight.csv"), "--no-push", timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "58 of 60 rows scored, 2 quarantined" in done.stdout
    output = next((root / "predictions").glob("tonight-*/tickets-classifier-v1"))
    predictions = pd.read_parquet(output / "predictions.parquet")
    assert len(predictions) == 58 and set(predictions["label"]) <= {"billing", "shipping", "technical"}
    reasons = sorted(pd.read_parquet(output / "quarantine.parquet")["reason"])
    assert reasons == ["column 'message': 35,000 characters, over package.max_text_chars (20,000)",
                       "column 'message': an empty text"]


def test_a_folder_of_text_files_names_its_non_utf8_file_then_reads_it_as_told(project):
    root, _, made = project
    refused = _pipeline(project, "--data", "data/sources/mail", "--new-dataset")
    assert refused.returncode == 1
    message = refused.stdout + refused.stderr
    assert f"{made['mail']['legacy'].name}: not UTF-8 text (byte 0xe9 at offset 17)" in message  # the é of café
    assert "ingest.text_fallback_encoding" in message
    done = _pipeline(project, "--data", "data/sources/mail", "--new-dataset",
                     "--set", "ingest.text_fallback_encoding=cp1252")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = json.loads((root / "data/prepared/meta.json").read_text())
    assert rows["source"] == "texts" and rows["columns"] == {"text": "text"}
    server, url = serve_last_built(*project[:2])
    try:
        answer = httpx.post(f"{url}/predict_text", json={"texts": list(NEW)}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert [a["label"] for a in answer.json()] == list(NEW.values())
        _hostile_texts(url)
    finally:
        stop(server)


def _hostile_texts(url: str) -> None:
    """/predict_text under bodies a hostile or broken client sends: a 4xx naming the problem, never a 5xx, and the
    service answers normally after."""
    limit = 20_000  # package.max_text_chars
    cases = {
        "a lone surrogate": b'{"texts": ["ok \\ud800 not"]}',
        "invalid UTF-8": b'{"texts": ["caf\xe9"]}',
        "a 1 MB text": json.dumps({"texts": ["word " * 200_000]}).encode(),
        "deep nesting": b'{"texts": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        "a number": b'{"texts": [3]}',
        "no texts": b'{"texts": []}',
        "2,000 texts": json.dumps({"texts": ["a"] * 2000}).encode(),
    }
    with httpx.Client(base_url=url, timeout=30, headers={"content-type": "application/json"}) as client:
        for name, body in cases.items():
            answer = client.post("/predict_text", content=body)
            assert 400 <= answer.status_code < 500 and answer.json().get("error"), (name, answer.status_code,
                                                                                    answer.text[:300])
        assert f"{limit:,}" in client.post("/predict_text", content=cases["a 1 MB text"]).json()["error"]
        nul = client.post("/predict_text", content=json.dumps({"texts": ["refund\x00 me", "", "  "]}).encode())
        assert nul.status_code == 200 and len(nul.json()) == 3  # the stated rule: NUL is a space, empty is kept
        valid = json.dumps({"texts": list(NEW)}).encode()
        statuses = [client.post("/predict_text", content=m).status_code for m in mutants(valid, 300, seed=5)]
        assert max(statuses) < 500 and statuses.count(200) > 10, sorted(set(statuses))
        assert client.get("/metadata").status_code == 200
