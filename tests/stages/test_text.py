"""Text through ingest, prepare and validate: texts equal after normalisation stay in one split, the tokenizer is
learnt from the train split only, and validation names empty texts, unknown words and drifted lengths."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from tasks.common.config import IngestParams, PrepareParams, ValidateParams
from tasks.common.errors import ValidationFailed
from tasks.ingest import ingest
from tasks.prepare import prepare
from tasks.validate import validate
from tests.support.own_data import tickets_csv


@pytest.fixture(scope="module")
def text_prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    made = tickets_csv(root / "tickets.csv", rows=500, duplicates=60)
    ingest(IngestParams(path="tickets.csv", label_column="queue"), root, root / "raw")
    prepare(PrepareParams(vocab_size=400), 42, root / "raw", root / "prepared")
    return root / "prepared", made


def test_texts_equal_after_normalisation_share_a_split_and_the_vocabulary_is_the_train_splits(text_prepared):
    from tasks.common.tokenizer import untrained
    from tasks.shipped.text import load_tokenizer, normalized

    prepared, made = text_prepared
    splits = {s: pd.read_parquet(prepared / s / "rows.parquet") for s in ("train", "val", "test")}
    tokenizer = untrained()
    keys = {s: {normalized(tokenizer, t) for t in f["message"]} for s, f in splits.items()}
    assert not keys["train"] & keys["val"] and not keys["train"] & keys["test"]  # 60 lower-cased copies included
    assert sum(len(f) for f in splits.values()) == len(made["frame"])
    meta = json.loads((prepared / "meta.json").read_text())
    vocabulary = load_tokenizer(meta["encoding"]["tokenizer"]).get_vocab()
    seen = " ".join(normalized(tokenizer, t) for t in splits["train"]["message"])
    pieces = {w.removeprefix("##") for w in vocabulary if not w.startswith("[")}
    assert pieces and all(p in seen for p in pieces)  # every word piece comes from the train split's text


@pytest.fixture
def accepted(text_prepared, tmp_path):
    copy = tmp_path / "prepared"
    shutil.copytree(text_prepared[0], copy)
    validate(ValidateParams(), copy, tmp_path / "out")
    return copy


def _changed(prepared, split: str, change) -> None:
    path = prepared / split / "rows.parquet"
    change(pd.read_parquet(path)).to_parquet(path, index=False)


def test_a_text_version_passes_and_its_reference_holds_length_and_unknown_share(accepted, tmp_path):
    reference = json.loads((tmp_path / "out" / "reference.json").read_text())
    assert reference["contract"]["columns"] == {"message": "text", "channel": "categorical"}
    assert set(reference["categories"]) == {"channel"}  # the text is no category
    assert set(reference["text"]["message"]) == {"__tokens", "__unknown_share"}
    assert 4 < reference["text"]["message"]["__tokens"]["mean"] < 20


def test_empty_texts_unknown_words_and_longer_texts_are_named(accepted, tmp_path):
    rng = np.random.default_rng(0)
    _changed(accepted, "val", lambda f: f.assign(message=f["message"].where(np.arange(len(f)) % 4 != 0, "  ")))
    gibberish = lambda n: " ".join("".join(rng.choice(list("qxzjvw"), 7)) for _ in range(n))  # noqa: E731
    _changed(accepted, "test", lambda f: f.assign(message=[m + " " + gibberish(12) for m in f["message"]]))
    with pytest.raises(ValidationFailed) as info:
        validate(ValidateParams(), accepted, tmp_path / "out")
    message = str(info.value)
    assert "val: expect_column_values_to_be_between(message__chars)" in message  # 25 % empty, over 10 %
    assert "test: expect_column_mean_to_be_between(message__unknown_share)" in message
    assert "test: expect_column_mean_to_be_between(message__tokens)" in message  # drifted from the reference


def _splits(prepared):
    from tasks.common.dataset import load_split, prepared_meta
    from tasks.shipped.text import text_layout

    data = prepared_meta(prepared)
    return text_layout(data.encoding, data.features), load_split(prepared / "train"), load_split(prepared / "val")


def test_the_tfidf_network_computes_what_scikit_learn_fitted_and_exports_as_it_runs(text_prepared, tmp_path):
    """TF-IDF + logistic regression fitted by scikit-learn on features computed from the token ids, written into a
    TfidfNet: the network's probabilities are scikit-learn's (its log-loss and accuracy on validation), and its
    ONNX export answers the same."""
    import torch
    from sklearn.metrics import log_loss

    from tasks.common.config import Params
    from tasks.compress.variants import export_onnx, servable
    from tasks.nn.latency import onnx_predictor
    from tasks.train.tfidf import fit_tfidf

    text, train, val = _splits(text_prepared[0])
    fit = fit_tfidf(Params(), text, (train.x, train.y), (val.x, val.y), 3)
    assert fit.c in Params().train.tfidf_c and text["dense"] == 3  # the channel's one-hot beside the text
    with torch.inference_mode():
        probabilities = torch.softmax(fit.model(torch.from_numpy(np.asarray(val.x))), 1).numpy()
    assert log_loss(val.y, probabilities, labels=[0, 1, 2]) == pytest.approx(fit.history[0]["val_loss"], abs=1e-4)
    assert (probabilities.argmax(1) == val.y).mean() == pytest.approx(fit.history[0]["val_accuracy"])
    export_onnx(servable(fit.model, 1.0, image_input=False), np.asarray(val.x[:2]), tmp_path / "tfidf.onnx")
    np.testing.assert_allclose(onnx_predictor(tmp_path / "tfidf.onnx")(np.asarray(val.x)), probabilities, atol=1e-5)


def test_auto_ships_tfidf_when_the_network_is_worse_on_validation(text_prepared, tmp_path):
    """One epoch leaves the Transformer far behind: `auto` ships the TF-IDF network, which loads as a network."""
    from tasks.common.config import Params
    from tasks.nn.checkpoint import load_checkpoint
    from tasks.nn.models import TfidfNet
    from tasks.train import train

    params = Params.model_validate({"train": {"epochs": 1}, "base": {"experiment": "text-families"}})
    result = train(params, tmp_path, text_prepared[0], tmp_path / "train")
    summary = json.loads((tmp_path / "train" / "metrics.json").read_text())
    assert result.family == summary["family"] == "tfidf", summary["family_reason"]
    assert summary["families"]["tfidf"]["val_accuracy"] > summary["families"]["network"]["val_accuracy"]
    model, payload = load_checkpoint(tmp_path / "train" / "model.pt")
    assert isinstance(model, TfidfNet) and payload["params"]["train"]["model"] == "tfidf" and payload["text"]


def test_texts_equal_after_normalisation_with_other_labels_are_reported_as_conflicts(tmp_path):
    """The same ticket sent twice, in other case and accents, filed under two queues: one example to the model, so
    one split, and validation reports the conflict (as for identical table rows)."""
    made = tickets_csv(tmp_path / "tickets.csv", rows=300, duplicates=0)
    frame = made["frame"]
    first = frame.iloc[0]
    other = next(q for q in made["classes"] if q != first["queue"])
    copy = {**first.to_dict(), "message": first["message"].upper().replace("E", "É"), "queue": other}
    pd.concat([frame, pd.DataFrame([copy])], ignore_index=True).to_csv(tmp_path / "tickets.csv", index=False)
    ingest(IngestParams(path="tickets.csv", label_column="queue"), tmp_path, tmp_path / "raw")
    prepare(PrepareParams(vocab_size=400), 42, tmp_path / "raw", tmp_path / "prepared")
    report = validate(ValidateParams(), tmp_path / "prepared", tmp_path / "out")
    assert report.success
    found = json.loads((tmp_path / "out" / "report.json").read_text())["conflicting_labels"]
    assert found["examples"] == 1 and sorted(found["labels_of_first"][0]) == sorted([first["queue"], other])
