"""The benchmark helpers that are not measurements: the MNIST-size data builder and the BENCHMARKS.md writer."""

import numpy as np

from benchmarks.mnist_size import build
from benchmarks.report import render


def test_mnist_size_images_look_like_mnist_and_follow_their_labels():
    splits = build(seed=1, sizes={"train": 300, "val": 50, "test": 100})
    assert {k: v.x.shape for k, v in splits.items()} == {
        "train": (300, 1, 28, 28), "val": (50, 1, 28, 28), "test": (100, 1, 28, 28)}
    x = splits["train"].x
    assert x.dtype == np.float32 and x.min() == 0 and 0.9 < x.max() <= 1
    np.testing.assert_allclose(x * 255, np.round(x * 255), atol=1e-4)  # 8-bit intensities, as MNIST
    border = np.concatenate([x[..., :2, :].ravel(), x[..., -2:, :].ravel(), x[..., :2].ravel(), x[..., -2:].ravel()])
    assert border.mean() < 0.1 * x[..., 8:20, 8:20].mean()  # digits sit in MNIST's centred 20×20 box
    # a nearest-centroid classifier fitted on train recognises test digits: images carry their labels
    train, test = splits["train"], splits["test"]
    centroids = np.stack([train.x[train.y == c].mean(0).ravel() for c in range(10)])
    predicted = ((test.x.reshape(len(test.x), 1, -1) - centroids[None]) ** 2).sum(-1).argmin(1)
    assert (predicted == test.y).mean() > 0.6


def test_report_lists_every_result_with_its_command():
    result = {"title": "A figure", "command": "python -m benchmarks.x", "measured_at": "2026-11-22T00:00:00+00:00",
              "machine": {"cores": 2, "cpu": "cpu", "versions": {"torch": "2.13.0", "torchao": "not installed"}},
              "markdown": "| a |\n|---|\n| 1 |", "figures": {}}
    text = render({"x": result})
    assert "## A figure" in text and "`python -m benchmarks.x`" in text and "| 1 |" in text
    assert "torch 2.13.0" in text and "torchao" not in text


def test_the_memory_benchmark_writes_a_scaled_prepared_layout_train_can_read(tmp_path):
    from benchmarks.train_memory import write_prepared
    from tasks.common.dataset import load_split

    base = build(seed=2, sizes={"train": 40, "val": 10, "test": 10})
    write_prepared(base, 3, tmp_path)
    train = load_split(tmp_path / "train", mmap=True)
    assert train.x.shape == (120, 1, 28, 28) and len(load_split(tmp_path / "test").y) == 10
    np.testing.assert_array_equal(train.x[80:], base["train"].x)
    np.testing.assert_array_equal(train.y, np.tile(base["train"].y, 3))
    from tasks.common.dataset import prepared_meta

    meta = prepared_meta(tmp_path)  # what train reads for the class count
    assert meta.classes == [str(k) for k in range(10)] and meta.served_shape == [28, 28]
