"""The promotion gate: paired tests on the same examples, and the rules built on them."""

from math import comb

import numpy as np
import pytest

from tasks.common.config import EvaluateParams
from tasks.evaluate.gate import Champion, Scores, decide, mcnemar, paired_bootstrap


def _pair(both: int, only_challenger: int, only_champion: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-example correctness of two models with the given counts of each (challenger, champion) outcome."""
    challenger = [True] * both + [True] * only_challenger + [False] * only_champion + [False] * neither
    champion = [True] * both + [False] * only_challenger + [True] * only_champion + [False] * neither
    return np.array(challenger), np.array(champion)


def test_mcnemar_is_the_exact_one_sided_binomial_on_the_disagreements():
    challenger, champion = _pair(300, 8, 2, 10)
    result = mcnemar(challenger, champion, 0.05)
    # P(X >= 8) for X ~ Binomial(10, 1/2), computed by hand: the 340 agreements play no part
    assert result.p_value == pytest.approx(sum(comb(10, k) for k in range(8, 11)) / 2**10)
    assert (result.challenger_only, result.champion_only) == (8, 2)
    assert not result.significant(0.05) and result.significant(0.06)
    assert mcnemar(*_pair(300, 0, 0, 20), 0.05).p_value == 1.0  # identical answers: no evidence at all


def test_the_lower_bound_is_positive_exactly_when_the_gain_is_significant():
    clear = mcnemar(*_pair(300, 15, 1, 4), 0.05)
    assert clear.p_value < 0.001 and clear.lower_bound > 0
    unclear = mcnemar(*_pair(300, 5, 3, 12), 0.05)
    assert unclear.p_value > 0.3 and unclear.lower_bound < 0


def test_the_paired_bootstrap_agrees_with_mcnemar_on_clear_and_unclear_cases():
    clear = paired_bootstrap(*_pair(300, 15, 1, 4), 0.05, seed=1)
    assert clear.p_value < 0.01 and clear.lower_bound > 0 and clear.statistic == pytest.approx(14 / 320)
    unclear = paired_bootstrap(*_pair(300, 5, 3, 12), 0.05, seed=1)
    assert unclear.p_value > 0.2 and unclear.lower_bound < 0


GATE = EvaluateParams(min_accuracy=0.9, min_improvement=0.005, max_class_regression=0.02, significance=0.05)
RECALL = {"0": 0.98, "1": 0.97}


def _scores(correct: np.ndarray, recall=RECALL) -> Scores:
    return Scores(correct, recall)


CLEAR = _pair(300, 15, 1, 4)  # challenger 315/320, champion 301/320: a significant gain
SMALL = _pair(300, 5, 3, 12)  # +2 examples: a gain, not a significant one


@pytest.mark.parametrize("challenger, champion, passed, reason", [
    (_scores(np.array([True] * 80 + [False] * 20)), None, False, "below min_accuracy 0.9"),
    (_scores(CLEAR[0]), None, True, "the first model: above min_accuracy 0.9"),
    (_scores(CLEAR[0]), Champion("1", None, "RuntimeError: shapes"), False, "champion v1 cannot score this test split"),
    (_scores(CLEAR[1]), Champion("1", _scores(CLEAR[0])), False, "below min_improvement 0.005"),
    (_scores(SMALL[0]), Champion("1", _scores(SMALL[1])), False, "not significant at 0.05"),
    (_scores(CLEAR[0], {"0": 0.99, "1": 0.90}), Champion("1", _scores(CLEAR[1])), False, "class 1 recall -0.0700"),
    (_scores(CLEAR[0], {"0": 0.99, "1": 0.96}), Champion("1", _scores(CLEAR[1])), True, "significant at 0.05"),
])
def test_the_gate_passes_only_a_significant_improvement_that_hurts_no_class(challenger, champion, passed, reason):
    decision = decide(GATE, "2", challenger, champion)
    assert decision.passed is passed and reason in decision.reason
    assert decision.previous_champion == (champion.version if champion else None)
    if champion is not None and champion.scores is not None:  # compared: the numbers are kept for the log
        assert decision.test == "mcnemar" and 0 < decision.p_value <= 1 and decision.lower_bound is not None
        assert "examples only v2 gets right" in decision.reason


def test_the_gate_refuses_to_compare_different_examples():
    with pytest.raises(ValueError, match="same examples"):
        decide(GATE, "2", _scores(CLEAR[0]), Champion("1", _scores(CLEAR[1][:-1])))


def test_a_network_significantly_worse_than_the_best_baseline_is_not_promoted():
    network, baseline = CLEAR[1], CLEAR[0]  # the baseline gets 315/320 right, the network 301/320
    refused = decide(GATE, "1", _scores(network), None, ("logistic_regression", baseline))
    assert not refused.passed
    assert refused.reason.startswith("test accuracy 0.9406 is significantly worse than the logistic regression "
                                     "baseline's 0.9844 on the same test split (mcnemar p=")
    allowed = GATE.model_copy(update={"must_beat_baseline": False})
    assert decide(allowed, "1", _scores(network), None, ("logistic_regression", baseline)).passed
    close = decide(GATE, "1", _scores(SMALL[1]), None, ("logistic_regression", SMALL[0]))  # worse, not significantly
    assert close.passed


def test_by_default_a_first_model_is_judged_against_the_baselines_not_a_fixed_accuracy():
    """A real table's first model at 0.86 that matches the best baseline is promoted (no floor set the digits'
    way); one significantly worse than the baseline is refused; a floor, when set, still applies."""
    defaults = EvaluateParams()
    assert defaults.min_accuracy == 0 and defaults.must_beat_baseline
    rng = np.random.default_rng(0)
    baseline = rng.random(2000) < 0.87  # gradient boosting: 0.87
    network = baseline.copy()  # 0.865: wrong on 35 the baseline gets right, right on 25 it gets wrong: within chance
    network[np.flatnonzero(baseline)[:35]] = False
    network[np.flatnonzero(~baseline)[:25]] = True
    matched = decide(defaults, "1", _scores(network), None, ("gradient_boosting", baseline))
    assert matched.passed and abs(np.mean(network) - 0.86) < 0.01
    assert "the first model: not significantly worse than the best baseline (gradient boosting 0.8" in matched.reason
    worse = baseline.copy()
    worse[np.flatnonzero(baseline)[:200]] = False  # 0.77: far below
    refused = decide(defaults, "1", _scores(worse), None, ("gradient_boosting", baseline))
    assert not refused.passed and "significantly worse than the gradient boosting baseline" in refused.reason
    floored = defaults.model_copy(update={"min_accuracy": 0.9})
    assert "below min_accuracy 0.9" in decide(floored, "1", _scores(network), None, ("gradient_boosting", baseline)).reason



def _imbalanced(minority_right_challenger: int, minority_right_champion: int):
    """900 majority examples (the champion misses 30 of them, the challenger 34) and 60 minority ones (each model
    gets the given number right): each model's per-example correctness, with the labels."""
    labels = np.array([0] * 900 + [1] * 60)
    challenger = np.ones(960, bool)
    champion = np.ones(960, bool)
    challenger[:34] = False  # a little worse on the majority
    champion[:30] = False
    challenger[900:] = np.arange(60) < minority_right_challenger
    champion[900:] = np.arange(60) < minority_right_champion
    return Scores(challenger, {}, labels), Scores(champion, {}, labels)


def test_balanced_accuracy_is_the_mean_of_the_classes_recalls():
    from sklearn.metrics import balanced_accuracy_score

    mine, theirs = _imbalanced(45, 20)
    predicted = np.where(mine.correct, mine.labels, 1 - mine.labels)
    assert mine.score("balanced_accuracy") == pytest.approx(balanced_accuracy_score(mine.labels, predicted))
    assert mine.score("accuracy") == pytest.approx(mine.accuracy)


def test_on_balanced_accuracy_a_minority_class_gain_promotes_where_accuracy_would_not():
    """The challenger finds 25 more of 60 minority examples and misses 4 more of 900 majority ones: accuracy +2.2
    points, balanced accuracy +20.6 points."""
    mine, theirs = _imbalanced(45, 20)
    by_accuracy = EvaluateParams(min_improvement=0.03, max_class_regression=1)
    assert not decide(by_accuracy, "2", mine, Champion("1", theirs)).passed
    balanced = by_accuracy.model_copy(update={"gate_metric": "balanced_accuracy"})
    decision = decide(balanced, "2", mine, Champion("1", theirs))
    assert decision.passed and decision.metric == "balanced_accuracy" and decision.test == "bootstrap"
    assert decision.champion_score == pytest.approx(theirs.score("balanced_accuracy"))
    assert "test balanced accuracy 0.8561 vs champion v1's 0.6500" in decision.reason
    # the reverse: a challenger that loses the minority class is refused on balanced accuracy, significantly worse
    worse = decide(balanced, "3", theirs, Champion("2", mine))
    assert not worse.passed and worse.improvement < -0.2


def test_on_balanced_accuracy_the_baseline_bar_weighs_each_class_alike():
    """A network that never predicts the minority class ties a baseline on accuracy, and is far behind on balanced
    accuracy: refused by the baseline rule only when the gate's metric is balanced accuracy."""
    network, baseline = _imbalanced(0, 50)
    network.correct[:34] = True  # 900 of 960 right, all of them majority examples
    baseline.correct[:50] = False  # 850 majority and 50 minority: 900 of 960 too
    by_accuracy = EvaluateParams()
    assert decide(by_accuracy, "1", network, None, ("logistic_regression", baseline.correct)).passed
    balanced = by_accuracy.model_copy(update={"gate_metric": "balanced_accuracy"})
    refused = decide(balanced, "1", network, None, ("logistic_regression", baseline.correct))
    assert not refused.passed and "test balanced accuracy 0.5000 is significantly worse than the logistic " \
                                  "regression baseline's" in refused.reason
