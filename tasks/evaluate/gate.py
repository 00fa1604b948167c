"""The promotion gate: a challenger replaces the champion only on a significant, paired improvement.

Both models are scored on the same test split, example by example. McNemar's exact test looks only at the
examples they disagree on: b = the challenger right where the champion is wrong, c = the reverse. With no
real difference, b ~ Binomial(b + c, 1/2); the one-sided p-value is P(X >= b). The paired bootstrap resamples
the examples and gives a one-sided interval for the accuracy difference. Pure functions: no MLflow here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from tasks.common.config import EvaluateParams
from tasks.common.outputs import GateDecision


METRIC_NAMES = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy"}


@dataclass(frozen=True)
class Scores:
    """A model's results on one test split: which examples it got right, each class's recall, and the true class
    of each example (what balanced accuracy weighs by)."""

    correct: np.ndarray  # bool, one per test example
    recall: dict[str, float]
    labels: np.ndarray | None = None

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.correct))

    def weights(self, metric: str) -> np.ndarray:
        """Per-example weights whose weighted sum of `correct` is `metric`: 1/n for accuracy; 1/(K n_k) for
        balanced accuracy (the mean of the K classes' recalls), so a minority class's example counts as much as
        its class does."""
        n = len(self.correct)
        if metric == "accuracy":
            return np.full(n, 1.0 / n)
        if self.labels is None:
            raise ValueError(f"{metric} needs each example's class")
        classes, index, counts = np.unique(self.labels, return_inverse=True, return_counts=True)
        return 1.0 / (len(classes) * counts[index])

    def score(self, metric: str) -> float:
        return float(np.sum(self.correct * self.weights(metric)))


@dataclass(frozen=True)
class Champion:
    version: str
    scores: Scores | None  # None when it cannot score this test split
    problem: str = ""


@dataclass(frozen=True)
class Comparison:
    """A paired test of challenger against champion on the same examples."""

    test: Literal["mcnemar", "bootstrap"]
    challenger_only: int  # examples the challenger gets right and the champion wrong (McNemar's b)
    champion_only: int  # the reverse (McNemar's c)
    statistic: float  # McNemar: b; bootstrap: the observed accuracy difference
    p_value: float  # one-sided, H1: the challenger is more accurate
    lower_bound: float  # of the accuracy difference, one-sided at confidence 1 - significance

    def significant(self, level: float) -> bool:
        return self.p_value < level


def Decision(version: str, passed: bool, reason: str, previous_champion: str | None, **numbers) -> GateDecision:
    """The gate's verdict on `version` (the typed record evaluate writes to gate.json)."""
    return GateDecision(version=version, passed=passed, reason=reason, previous_champion=previous_champion, **numbers)


def mcnemar(challenger: np.ndarray, champion: np.ndarray, significance: float) -> Comparison:
    """McNemar's exact one-sided test on the disagreements; the lower bound is the exact (Clopper-Pearson) one
    on the share of disagreements the challenger wins, turned into an accuracy difference."""
    from scipy.stats import beta, binomtest

    b = int(np.sum(challenger & ~champion))
    c = int(np.sum(~challenger & champion))
    n = len(challenger)
    p_value = binomtest(b, b + c, 0.5, alternative="greater").pvalue if b + c else 1.0
    low_share = float(beta.ppf(significance, b, c + 1)) if b else 0.0  # one-sided lower bound on b / (b + c)
    low = (b + c) * (2 * low_share - 1) / n
    return Comparison("mcnemar", b, c, float(b), float(p_value), low)


def paired_bootstrap(challenger: np.ndarray, champion: np.ndarray, significance: float, resamples: int = 10_000,
                     seed: int = 0, weights: np.ndarray | None = None) -> Comparison:
    """The accuracy difference over `resamples` resamplings of the test examples (the same ones for both); with
    `weights` (summing to 1), the difference of that weighted accuracy (e.g. balanced accuracy)."""
    n = len(challenger)
    diff = challenger.astype(np.int8) - champion.astype(np.int8)
    if weights is not None:
        diff = diff * (weights * n)  # its mean over the examples is the weighted difference
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, 1000):  # in blocks: 10 000 × n indices at once is memory for nothing
        stop = min(start + 1000, resamples)
        means[start:stop] = diff[rng.integers(0, n, size=(stop - start, n))].mean(1)
    observed = float(diff.mean())
    p_value = float((np.sum(means <= 0) + 1) / (resamples + 1))  # share of resamples with no gain
    b, c = int(np.sum(challenger & ~champion)), int(np.sum(~challenger & champion))
    return Comparison("bootstrap", b, c, observed, p_value, float(np.quantile(means, significance)))


def compare(params: EvaluateParams, ahead: Scores, behind: np.ndarray) -> Comparison:
    """The gate's paired test of `ahead` against `behind` (which examples it got right) on `params.gate_metric`:
    `params.paired_test` for accuracy; the weighted paired bootstrap for balanced accuracy (McNemar counts
    examples, not classes)."""
    if params.gate_metric == "accuracy":
        test = mcnemar if params.paired_test == "mcnemar" else paired_bootstrap
        return test(ahead.correct, behind, params.significance)
    return paired_bootstrap(ahead.correct, behind, params.significance, weights=ahead.weights(params.gate_metric))


def worse_than_baseline(params: EvaluateParams, challenger: Scores, baseline: tuple[str, np.ndarray] | None) -> str:
    """Why the challenger loses to the best baseline (significantly worse by the gate's paired test on the same
    examples), or "" when it does not."""
    if baseline is None or not params.must_beat_baseline:
        return ""
    name, correct = baseline
    theirs = Scores(correct, {}, challenger.labels)
    compared = compare(params, theirs, challenger.correct)  # H1: the baseline is better
    if not compared.significant(params.significance):
        return ""
    metric = params.gate_metric
    return (f"test {METRIC_NAMES[metric]} {challenger.score(metric):.4f} is significantly worse than the "
            f"{name.replace('_', ' ')} baseline's {theirs.score(metric):.4f} on the same test split ({compared.test} "
            f"p={compared.p_value:.4g}; evaluate.must_beat_baseline)")


def _first_bar(params: EvaluateParams, baseline: tuple[str, np.ndarray] | None, labels: np.ndarray | None) -> str:
    """What a first model cleared: the baselines fitted on the same split (the default bar), and the absolute floor
    when one is set."""
    bars = []
    if baseline is not None and params.must_beat_baseline:
        name, correct = baseline
        metric = params.gate_metric
        bars.append(f"not significantly worse than the best baseline ({name.replace('_', ' ')} "
                    f"{Scores(correct, {}, labels).score(metric):.4f}"
                    f"{'' if metric == 'accuracy' else ' ' + METRIC_NAMES[metric]}) on the same test split")
    if params.min_accuracy > 0:
        bars.append(f"above min_accuracy {params.min_accuracy}")
    return " and ".join(bars) or "no bar set (evaluate.must_beat_baseline false, min_accuracy 0)"


def decide(params: EvaluateParams, version: str, challenger: Scores, champion: Champion | None,
           baseline: tuple[str, np.ndarray] | None = None) -> GateDecision:
    """Let `version` through only if it clears `min_accuracy` (0, off, by default), is not significantly worse than
    the best baseline (`baseline`: its name and which test examples it got right) and, against a champion scored on
    the same test split, its gain is at least `min_improvement`, significant at `significance` by the paired test,
    and no class's recall drops by more than `max_class_regression`."""
    previous = champion.version if champion else None
    accuracy = challenger.accuracy
    if accuracy < params.min_accuracy:
        return Decision(version, False, f"test accuracy {accuracy:.4f} below min_accuracy {params.min_accuracy}", previous)
    losing = worse_than_baseline(params, challenger, baseline)
    if losing:
        return Decision(version, False, losing, previous)
    if champion is not None and champion.version == version:
        return Decision(version, True, f"v{version} is the champion already: the same run and weights, re-evaluated "
                                       "(nothing new was registered)", previous)
    if champion is None:
        bar = _first_bar(params, baseline, challenger.labels)
        return Decision(version, True, f"test accuracy {accuracy:.4f}, the first model: {bar}", None)
    if champion.scores is None:
        return Decision(version, False, f"champion v{previous} cannot score this test split ({champion.problem}); "
                                        "register under a new evaluate.registered_model to start a new line", previous)
    theirs = champion.scores
    if len(theirs.correct) != len(challenger.correct):
        raise ValueError(f"paired test needs the same examples: {len(challenger.correct)} vs {len(theirs.correct)}")
    metric = params.gate_metric
    mine, their_score = challenger.score(metric), Scores(theirs.correct, theirs.recall, challenger.labels).score(metric)
    gain = mine - their_score
    compared = compare(params, challenger, theirs.correct)
    numbers = dict(previous_champion=previous, champion_accuracy=theirs.accuracy, improvement=gain,
                   test=compared.test, statistic=compared.statistic, p_value=compared.p_value,
                   lower_bound=compared.lower_bound, metric=metric, champion_score=their_score)
    versus = (f"test {METRIC_NAMES[metric]} {mine:.4f} vs champion v{previous}'s {their_score:.4f} on the same "
              "test split "
              f"({gain:+.4f}; {compared.challenger_only} examples only v{version} gets right, {compared.champion_only} "
              f"only v{previous}; {compared.test} p={compared.p_value:.4g})")
    if gain < params.min_improvement:
        return Decision(version, False, f"{versus}: below min_improvement {params.min_improvement}", **numbers)
    if not compared.significant(params.significance):
        return Decision(version, False, f"{versus}: not significant at {params.significance}", **numbers)
    regressions = {c: theirs.recall[c] - r for c, r in challenger.recall.items()
                   if c in theirs.recall and theirs.recall[c] - r > params.max_class_regression}
    if regressions:
        named = ", ".join(f"class {c} recall -{d:.4f}" for c, d in sorted(regressions.items()))
        return Decision(version, False, f"{versus}, but {named} (max_class_regression {params.max_class_regression})",
                        **numbers, class_regressions=regressions)
    return Decision(version, True, f"{versus}: significant at {params.significance}, no class recall down by more "
                                   f"than {params.max_class_regression}", **numbers)
