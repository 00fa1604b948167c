"""The tree family: gradient-boosted trees trained beside the network on a table, shipped when better on the
validation split, as ONNX that computes what scikit-learn computes; registered and re-scored as a champion."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest

from tasks.common.config import IngestParams, Params
from tasks.common.errors import ConfigError
from tasks.train.contest import families
from tasks.train.trees import to_onnx
from tests.support import own_data


def _fitted(n_classes: int, seed: int = 0):
    from sklearn.ensemble import HistGradientBoostingClassifier

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(600, 6)).astype(np.float32)
    y = (np.digitize(x[:, 0], np.linspace(-1, 1, n_classes - 1)) + (x[:, 1] > 1)) % n_classes
    x[::9, 2] = np.nan  # missing values take the branch the ensemble learnt for them
    return HistGradientBoostingClassifier(max_iter=40, random_state=seed).fit(x[:400], y[:400]), x[400:]


@pytest.mark.parametrize("n_classes", [2, 5])
def test_the_onnx_tree_computes_what_scikit_learn_computes(n_classes):
    import onnx
    import onnxruntime as ort

    model, x = _fitted(n_classes)
    graph = to_onnx(model, 6, n_classes)
    outputs = [o.name for o in onnx.load_from_string(graph).graph.output]
    assert outputs == ["probabilities"]  # served like a network's: one output, a column per class
    session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    probabilities = session.run(None, {"images": x})[0]
    assert probabilities.shape == (len(x), n_classes) and np.isnan(x).any()
    np.testing.assert_allclose(probabilities, model.predict_proba(x), atol=1e-5)
    assert (probabilities.argmax(1) == model.predict(x)).all()


def test_the_skl2onnx_workaround_is_still_needed():
    """tasks/train/trees.py passes skl2onnx's own converter ints for its bools; when this fails, skl2onnx converts
    HistGradientBoosting under onnx 1.23 by itself and `_ints_not_bools` can go."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    model, _ = _fitted(2)
    with pytest.raises(ValueError, match="TreeEnsembleClassifier"):
        convert_sklearn(model, initial_types=[("images", FloatTensorType([None, 6]))],
                        options={id(model): {"zipmap": False}})


def test_which_families_train_on_which_data():
    assert families("auto", "table", has_text=False) == ["network", "tree"]
    assert families("auto", "table", has_text=True) == ["network", "tfidf"]  # token ids are names, not quantities
    assert families("tfidf", "table", has_text=True) == ["tfidf"]
    assert families("auto", "images", has_text=False) == ["network"]
    assert families("mlp", "table", has_text=False) == ["network"]
    assert families("tree", "table", has_text=False) == ["tree"]
    with pytest.raises(ConfigError, match="train.model=tree needs a table without text .* this data is images"):
        families("tree", "images", has_text=False)
    with pytest.raises(ConfigError, match="this data is a table with text"):
        families("tree", "table", has_text=True)
    with pytest.raises(ConfigError, match="train.model=tfidf needs a text column; this data has none"):
        families("tfidf", "table", has_text=False)


@pytest.fixture(scope="module")
def transactions(tmp_path_factory):
    """A table whose classes follow sharp thresholds (tests/support/own_data.py transactions_csv), prepared."""
    from tasks.ingest import ingest
    from tasks.prepare import prepare

    root = tmp_path_factory.mktemp("transactions")
    made = own_data.transactions_csv(root / "transactions.csv")
    ingest(IngestParams(path=str(root / "transactions.csv"), label_column="decision"), root, root / "raw")
    prepare(Params().prepare, 42, root / "raw", root / "prepared")
    return root, made


def test_auto_ships_the_tree_when_it_wins_on_validation_and_the_gate_can_reload_it(transactions, tmp_path):
    from tasks.common import registry
    from tasks.common.dataset import load_split
    from tasks.evaluate.champion import champion_scores
    from tasks.nn.checkpoint import TreeModel, load_checkpoint
    from tasks.train import train

    root, made = transactions
    params = Params.model_validate({"train": {"epochs": 8, "patience": 8}, "base": {"experiment": "trees"}})
    result = train(params, tmp_path, root / "prepared", tmp_path / "train")
    assert result.family == "tree"
    summary = json.loads((tmp_path / "train" / "metrics.json").read_text())
    scores = summary["families"]
    assert summary["family"] == "tree" and scores["tree"]["val_accuracy"] > scores["network"]["val_accuracy"] + 0.05
    assert result.val_accuracy == pytest.approx(scores["tree"]["val_accuracy"])  # what a sweep's trial reports
    assert summary["family_reason"].startswith("validation accuracy: tree 0.9") and "ahead (paired z" in \
        summary["family_reason"]
    assert summary["families"]["tree"]["val_log_loss"] < summary["families"]["network"]["val_log_loss"]
    history = (tmp_path / "train" / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,") and len(history) - 1 == summary["epochs_run"]  # one row per round
    model, payload = load_checkpoint(tmp_path / "train" / "model.pt")
    assert isinstance(model, TreeModel) and payload["input_shape"] == [7] and payload["n_classes"] == 3
    run = mlflow.MlflowClient().get_run(result.run_id)
    assert run.data.tags["train.family"] == "tree"
    assert {"family_tree_val_accuracy", "family_network_val_accuracy", "tree_rounds"} <= set(run.data.metrics)
    assert run.data.metrics["best_val_accuracy"] == pytest.approx(summary["val_accuracy"])  # the shipped model's
    assert run.data.metrics["best_epochs_run"] == summary["epochs_run"]  # what `mlops reproduce` compares

    test = load_split(root / "prepared" / "test")
    probabilities = model.predict_proba(np.asarray(test.x))
    assert (probabilities.argmax(1) == test.y).mean() > 0.9
    with mlflow.start_run(run_id=result.run_id) as active:  # as evaluate registers it: the onnx flavour
        version = registry.log_and_register(model, test.x[:4], probabilities[:4], "trees-classifier", active,
                                            tmp_path / "train" / "model.pt", "md5-of-the-test")
    registry.move_champion("trees-classifier", version, "promote", "the test's")
    champion = champion_scores("trees-classifier", lambda predict: predict(test.x))
    assert champion.problem == "", champion.problem
    np.testing.assert_allclose(champion.scores, probabilities, atol=1e-6)  # reloaded from its checkpoint, no code


def test_train_model_tree_trains_the_trees_alone(transactions, tmp_path):
    from tasks.train import train

    root, _ = transactions
    params = Params.model_validate({"train": {"model": "tree"}, "base": {"experiment": "trees"}})
    result = train(params, tmp_path, root / "prepared", tmp_path / "train")
    summary = json.loads((tmp_path / "train" / "metrics.json").read_text())
    assert result.family == "tree" and list(summary["families"]) == ["tree"] and result.device == "cpu"
    assert (tmp_path / "train" / "curves.png").stat().st_size > 0
    run = mlflow.MlflowClient().get_run(result.run_id)
    assert run.data.params["train.model"] == "tree" and "data.train.md5" in run.data.tags


def test_a_lead_within_noise_goes_to_the_lower_validation_log_loss():
    from tasks.train.contest import judge

    y = np.array([0, 1] * 500)
    sure = np.where(y[:, None] == np.arange(2), 0.9, 0.1)  # right everywhere, confident
    vague = np.where(y[:, None] == np.arange(2), 0.6, 0.4)
    vague[:2] = vague[:2, ::-1]  # two examples worse: 0.998 against 1.0, within noise
    tie = judge({"network": vague, "tree": sure}, y, "accuracy", 0.05)
    assert tie.family == "tree" and "within noise" in tie.reason and "log-loss decides: tree" in tie.reason
    wrong = sure.copy()
    wrong[:100] = wrong[:100, ::-1]  # 100 of 1,000 wrong: a lead no noise explains
    clear = judge({"network": vague, "tree": wrong}, y, "accuracy", 0.05)
    assert clear.family == "network" and "ahead (paired z" in clear.reason
    assert clear.scores == pytest.approx({"network": 0.998, "tree": 0.9})
    minority = np.array([0] * 900 + [1] * 100)  # balanced accuracy weighs the 100 as much as the 900
    always_zero = np.tile([1.0, 0.0], (1000, 1))
    finds_ones = np.where(minority[:, None] == np.arange(2), 0.7, 0.3)
    finds_ones[:60] = finds_ones[:60, ::-1]  # 60 majority rows wrong: still far ahead on balanced accuracy
    verdict = judge({"network": always_zero, "tree": finds_ones}, minority, "balanced_accuracy", 0.05)
    assert verdict.family == "tree" and verdict.scores["network"] == pytest.approx(0.5)


def test_a_sweep_can_search_the_trees_knobs():
    import optuna

    from jobs.sweep.space import check, suggest
    from tasks.common.config import SweepDimension

    params = Params()
    space = {"train.model": SweepDimension(choices=["tree", "mlp"]),
             "train.tree_learning_rate": SweepDimension(low=0.02, high=0.3, log=True),
             "train.tree_max_leaf_nodes": SweepDimension(low=8, high=64)}
    check(space, params)
    trial = optuna.trial.FixedTrial({"train.model": "tree", "train.tree_learning_rate": 0.05,
                                     "train.tree_max_leaf_nodes": 16})
    assert suggest(trial, space, params) == {"train.model": "tree", "train.tree_learning_rate": 0.05,
                                             "train.tree_max_leaf_nodes": 16}
    with pytest.raises(ConfigError, match="sweep.space.train.tree_learning_rate"):
        check({"train.tree_learning_rate": SweepDimension(low=0.1, high=2.0)}, params)
