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
    with pytest.raises(DataError, match=r"\{'7': 1\} \(distinct examples per class"):
        split_stratified(np.zeros((101, 1, 2, 2), np.float32), y, 0.2, 0.2, seed=0)


def test_identical_examples_land_in_one_split_and_data_without_copies_splits_as_before():
    """Real data repeats itself: every copy of an example goes to the split its first copy went to, whatever its
    label, so val and test hold no copy of a training example; stratification and sizes hold; data without copies
    is cut exactly as a row split would cut it."""
    from tasks.prepare.stage import example_keys

    rng = np.random.default_rng(3)
    distinct = rng.random((400, 1, 4, 4), dtype=np.float32)
    copies = rng.integers(0, 400, 200)  # 200 copies of 400 examples, some copied several times
    x = np.concatenate([distinct, distinct[copies]])
    y = np.concatenate([np.repeat([0, 1], [340, 60]), np.repeat([0, 1], [340, 60])[copies]])
    y[-1] = 1 - y[-1]  # a copy with a conflicting label still travels with its example
    parts = split_stratified(x, y, 0.15, 0.2, seed=0, groups=example_keys(x))
    keys = {name: set(example_keys(part.x)) for name, part in parts.items()}
    assert not keys["train"] & keys["val"] and not keys["train"] & keys["test"] and not keys["val"] & keys["test"]
    assert sum(len(part) for part in parts.values()) == 600
    assert len(keys["test"]) == 80 and len(keys["val"]) == 60  # 20 % and 15 % of the 400 distinct examples
    assert 0.1 < parts["test"].y.mean() < 0.2  # the 15 % minority class in every split
    plain = split_stratified(distinct, y[:400], 0.15, 0.2, seed=0)
    grouped = split_stratified(distinct, y[:400], 0.15, 0.2, seed=0, groups=example_keys(distinct))
    assert all(np.array_equal(plain[name].x, grouped[name].x) for name in plain)


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
