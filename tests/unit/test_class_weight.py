"""train.class_weight: balanced weights count a minority class as much as the largest; none leaves the loss alone."""

import pytest
import torch

from tasks.train.loop import _class_weight


def test_balanced_weights_are_n_over_classes_times_rows_and_an_absent_class_gets_one():
    y = torch.tensor([0] * 90 + [1] * 10)
    weights = _class_weight("balanced", y, n_classes=3)
    torch.testing.assert_close(weights, torch.tensor([100 / (2 * 90), 100 / (2 * 10), 1.0]))
    assert float(weights[0] * 90) == pytest.approx(float(weights[1] * 10))  # each present class weighs the same
    assert _class_weight("none", y, n_classes=3) is None


def test_a_weighted_loss_pulls_harder_on_the_minority_class():
    import torch.nn.functional as F

    y = torch.tensor([0] * 9 + [1])
    logits = torch.zeros(10, 2)
    logits[:, 0] = 2.0  # a model that always says class 0
    plain = F.cross_entropy(logits, y)
    weighted = F.cross_entropy(logits, y, weight=_class_weight("balanced", y, 2))
    assert weighted > plain  # its one mistake, on the minority class, costs more
