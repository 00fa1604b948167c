import numpy as np
import pytest

from tasks.common.dataset import load_split
from tasks.common.errors import DataError
from tasks.ingest import ingest
from tasks.prepare import prepare, split_stratified


def test_split_sizes_classes_and_scaling(prepared, params):
    splits = {name: load_split(prepared / name) for name in ("train", "val", "test")}
    total = sum(len(s) for s in splits.values())
    assert total == 1797
    assert abs(len(splits["test"]) / total - params.prepare.test_fraction) < 0.01
    assert abs(len(splits["val"]) / total - params.prepare.val_fraction) < 0.01
    for split in splits.values():
        assert split.x.shape[1:] == (1, 8, 8) and split.x.dtype == np.float32
        assert split.x.min() >= 0 and split.x.max() <= 1
        assert set(np.unique(split.y)) == set(range(10))


def test_split_is_deterministic_and_seeded():
    x = np.random.default_rng(0).random((300, 1, 8, 8), dtype=np.float32)
    y = np.repeat(np.arange(3), 100)
    a, b = split_stratified(x, y, 0.2, 0.2, seed=1), split_stratified(x, y, 0.2, 0.2, seed=1)
    c = split_stratified(x, y, 0.2, 0.2, seed=2)
    assert np.array_equal(a["test"].x, b["test"].x)
    assert not np.array_equal(a["test"].x, c["test"].x)


def test_split_is_stratified():
    y = np.concatenate([np.zeros(900, int), np.ones(100, int)])
    parts = split_stratified(np.zeros((1000, 1, 2, 2), np.float32), y, 0.1, 0.2, seed=0)
    assert parts["test"].y.mean() == pytest.approx(0.1, abs=0.01)
    assert parts["val"].y.mean() == pytest.approx(0.1, abs=0.02)


def test_a_class_too_small_to_split_is_named():
    y = np.array([0] * 50 + [1] * 50 + [7])
    with pytest.raises(DataError, match=r"\{'7': 1\} \(rows per class\)"):
        split_stratified(np.zeros((101, 1, 2, 2), np.float32), y, 0.2, 0.2, seed=0)


def test_arrays_source_round_trips(tmp_path, params):
    folder = tmp_path / "data" / "sources" / "mine"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    np.save(folder / "images.npy", rng.integers(0, 17, (120, 8, 8)).astype(np.float32))
    np.save(folder / "labels.npy", np.repeat(np.arange(4), 30))
    cfg = params.ingest.model_copy(update={"source": "arrays", "path": "data/sources/mine"})
    result = ingest(cfg, tmp_path, tmp_path / "raw")
    assert result.rows == 120 and result.image_shape == (8, 8)
    prepare(params.prepare, 0, tmp_path / "raw", tmp_path / "prepared")
    assert len(load_split(tmp_path / "prepared" / "train")) == 78


@pytest.mark.parametrize(
    ("images", "labels", "message"),
    [
        (np.zeros((10, 64)), np.zeros(10, int), "N×H×W"),
        (np.zeros((10, 8, 8)), np.zeros(9, int), "one per image"),
        (np.zeros((10, 8, 8)), np.arange(10) / 4, "fractional number: this looks like a regression target"),
        (np.zeros((10, 8, 8)), np.zeros(10, int), "a classifier needs at least 2 classes"),
        (np.zeros((0, 8, 8)), np.zeros(0, int), "holds no images"),
    ],
)
def test_malformed_arrays_are_named(tmp_path, params, images, labels, message):
    folder = tmp_path / "src"
    folder.mkdir()
    np.save(folder / "images.npy", images)
    np.save(folder / "labels.npy", labels)
    cfg = params.ingest.model_copy(update={"source": "arrays", "path": "src"})
    with pytest.raises(DataError, match=message):
        ingest(cfg, tmp_path, tmp_path / "raw")


def test_truncated_array_file_is_named(tmp_path, params):
    folder = tmp_path / "src"
    folder.mkdir()
    np.save(folder / "images.npy", np.zeros((10, 8, 8)))
    (folder / "labels.npy").write_bytes(b"\x93NUMPY garbage")
    cfg = params.ingest.model_copy(update={"source": "arrays", "path": "src"})
    with pytest.raises(DataError, match="labels.npy"):
        ingest(cfg, tmp_path, tmp_path / "raw")
