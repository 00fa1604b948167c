"""Each source format, written out from the bundled digits as a user would bring it, read back by `ingest`."""

import gzip
import struct
import time

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from tasks.common.config import IngestParams
from tasks.common.errors import DataError
from tasks.ingest import ingest


@pytest.fixture(scope="module")
def digits():
    bunch = load_digits()
    return (bunch.images * 255 / 16).round().astype(np.uint8), bunch.target.astype(np.int64)


def write_idx(path, array, compress):
    codes = {np.dtype(np.uint8): 0x08}
    blob = struct.pack(">BBBB", 0, 0, codes[array.dtype], array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    blob += array.tobytes()
    path.write_bytes(gzip.compress(blob) if compress else blob)


def _raw(root):
    return np.load(root / "raw" / "images.npy"), np.load(root / "raw" / "labels.npy")


def _ingest(root, **params):
    return ingest(IngestParams(**params), root, root / "raw")


@pytest.mark.parametrize("compress", [True, False])
def test_idx_files_round_trip_gzipped_or_not(tmp_path, digits, compress):
    images, labels = digits
    folder = tmp_path / "mnist"
    folder.mkdir()
    suffix = ".gz" if compress else ""
    write_idx(folder / f"train-images-idx3-ubyte{suffix}", images[:1500], compress)
    write_idx(folder / f"train-labels-idx1-ubyte{suffix}", labels[:1500].astype(np.uint8), compress)
    write_idx(folder / f"t10k-images-idx3-ubyte{suffix}", images[1500:], compress)
    write_idx(folder / f"t10k-labels-idx1-ubyte{suffix}", labels[1500:].astype(np.uint8), compress)
    result = _ingest(tmp_path, source="idx", path="mnist")
    assert result.rows == len(labels) and result.image_shape == (8, 8)
    got_images, got_labels = _raw(tmp_path)
    # pairs are read in name order: t10k first, then train
    np.testing.assert_array_equal(got_images, np.concatenate([images[1500:], images[:1500]]).astype(np.float32))
    np.testing.assert_array_equal(got_labels, np.concatenate([labels[1500:], labels[:1500]]))


def test_a_truncated_idx_file_is_named(tmp_path, digits):
    images, labels = digits
    folder = tmp_path / "mnist"
    folder.mkdir()
    write_idx(folder / "train-images-idx3-ubyte", images, compress=False)
    write_idx(folder / "train-labels-idx1-ubyte", labels.astype(np.uint8), compress=False)
    path = folder / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: truncated or padded IDX data"):
        _ingest(tmp_path, source="idx", path="mnist")
    path.write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(DataError, match="not an IDX file"):
        _ingest(tmp_path, source="idx", path="mnist")


def _image_folder(root, images, labels, per_class=12):
    for digit in range(10):
        (root / str(digit)).mkdir(parents=True)
        for i, idx in enumerate(np.flatnonzero(labels == digit)[:per_class]):
            gray = Image.fromarray(images[idx]).resize((28, 28), Image.Resampling.NEAREST)
            if i % 3 == 0:
                gray.save(root / str(digit) / f"{i}.png")
            elif i % 3 == 1:
                Image.merge("RGB", [gray] * 3).save(root / str(digit) / f"{i}.png")  # RGB is made gray
            else:
                gray.save(root / str(digit) / f"{i}.jpg", quality=95)


def test_an_image_folder_gives_resized_grayscale_images_labelled_by_folder(tmp_path, digits):
    images, labels = digits
    _image_folder(tmp_path / "folder", images, labels)
    result = _ingest(tmp_path, source="images", path="folder", image_size=(16, 16))
    assert result.rows == 120 and result.image_shape == (16, 16)
    got_images, got_labels = _raw(tmp_path)
    assert np.bincount(got_labels).tolist() == [12] * 10
    assert 0 <= got_images.min() and got_images.max() <= 255 and got_images.max() > 200
    # the first PNG of class 3, resized back, is the digit it was made from
    first_three = images[np.flatnonzero(labels == 3)[0]].astype(np.float32)
    small = np.asarray(Image.fromarray(got_images[got_labels == 3][0].astype(np.uint8)).resize((8, 8), Image.Resampling.BOX))
    assert np.abs(small.astype(np.float32) - first_three).mean() < 25


def test_a_non_image_in_the_image_folder_is_named(tmp_path, digits):
    images, labels = digits
    _image_folder(tmp_path / "folder", images, labels, per_class=3)
    (tmp_path / "folder" / "4" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"notes.txt: not a PNG or JPEG file"):
        _ingest(tmp_path, source="images", path="folder")
    (tmp_path / "folder" / "4" / "notes.txt").unlink()
    (tmp_path / "folder" / "4" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DataError, match=r"broken.png: not a readable PNG or JPEG image"):
        _ingest(tmp_path, source="images", path="folder")


def test_a_source_folder_that_is_missing_is_named(tmp_path):
    with pytest.raises(DataError, match="is not a folder"):
        _ingest(tmp_path, source="idx", path="nowhere")


@pytest.mark.slow
@pytest.mark.parametrize("source", ["idx", "images", "table"])
def test_the_stages_run_on_each_source(tmp_path, digits, source):
    """ingest → prepare → validate → train (and compress, for the table's MLP) through the command line dvc.yaml calls."""
    import json
    from importlib import import_module

    import yaml

    from tasks.common.stage_cli import main
    from tests.support.processes import REPO

    images, labels = digits
    folder = tmp_path / "data" / "sources" / "mine"
    folder.mkdir(parents=True)
    stages = ["ingest", "prepare", "validate", "train"]
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["ingest"].update(source=source, path="data/sources/mine")
    if source == "idx":
        write_idx(folder / "train-images-idx3-ubyte.gz", images, compress=True)
        write_idx(folder / "train-labels-idx1-ubyte.gz", labels.astype(np.uint8), compress=True)
    elif source == "images":
        _image_folder(folder, images, labels, per_class=100)
    else:
        from tests.stages.test_tables import digits_table

        digits_table().to_csv(folder / "digits.csv", index=False)
        params["ingest"]["label_column"] = "digit"
        params["train"]["model"] = "mlp"
        params["compress"].update(finetune_epochs=2, calibrations=["minmax"])
        stages.append("compress")
    params["prepare"]["pixel_max"] = 255
    params["train"].update(epochs=12, patience=12)
    params["validate"]["min_rows_per_class"] = 5   # the image fixture is small: 100 images a class
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    for stage in stages:  # each stage's `python -m tasks.<stage>`, in this process
        assert main(stage, import_module(f"tasks.{stage}").run, ["--root", str(tmp_path)]) == 0, stage
    assert json.loads((tmp_path / "artifacts" / "validate" / "report.json").read_text())["success"] is True
    assert json.loads((tmp_path / "artifacts" / "train" / "metrics.json").read_text())["val_accuracy"] > 0.5
    if source == "table":  # the MLP over encoded rows exports, quantizes and is measured like the image models
        variants = json.loads((tmp_path / "artifacts" / "compress" / "variants.json").read_text())
        assert {"fp32-onnx", "int8-minmax-onnx", "int8-dynamic-onnx"} <= set(variants)
        assert variants["fp32-onnx"]["agreement"] >= 0.995 and variants["fp32-torch"]["accuracy"] > 0.8


def test_class_names_are_kept_and_numeric_folders_ordered_as_numbers(tmp_path, digits):
    import json

    images, _ = digits
    for name in ("10", "9", "100"):  # sorted as text these would be 10, 100, 9
        (tmp_path / "codes" / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(images[i]).save(tmp_path / "codes" / name / f"{i}.png")
    _ingest(tmp_path, path="codes")  # source: auto, told from the folder
    meta = json.loads((tmp_path / "raw" / "meta.json").read_text())
    assert meta["source"] == "images" and meta["classes"] == ["9", "10", "100"] and meta["channels"] == 1
    assert np.load(tmp_path / "raw" / "labels.npy").tolist() == [1, 1, 1, 2, 2, 2, 0, 0, 0]  # folders 10, 100, 9 in turn


@pytest.mark.parametrize("make, message", [
    (lambda f: (f / ".cache").mkdir(), r"\.cache: a hidden folder among the class folders"),
    (lambda f: (f / "4" / ".DS_Store").write_bytes(b"\0"), r"\.DS_Store: a hidden file"),
    (lambda f: (f / "empty").mkdir(), r"empty: the class folder 'empty' is empty"),
    (lambda f: (f / "readme.md").write_text("hi"), r"readme.md: a file beside the class folders"),
])
def test_what_does_not_belong_in_an_image_folder_is_named(tmp_path, digits, make, message):
    images, labels = digits
    _image_folder(tmp_path / "folder", images, labels, per_class=3)
    make(tmp_path / "folder")
    with pytest.raises(DataError, match=message):
        _ingest(tmp_path, source="images", path="folder")


def test_an_empty_array_file_is_named_and_not_retryable(tmp_path):
    folder = tmp_path / "arrays"
    folder.mkdir()
    np.save(folder / "images.npy", np.zeros((4, 8, 8)))
    (folder / "labels.npy").write_bytes(b"")
    with pytest.raises(DataError, match=r"labels.npy: the file is empty \(0 bytes\)") as info:
        _ingest(tmp_path, path="arrays")
    assert info.value.retryable is False


def test_text_and_boolean_labels_become_one_vocabulary(tmp_path):
    from tasks.ingest.labels import encode_labels

    index, vocabulary = encode_labels(np.array(["cat", "dog", "cat", "emu"]), "x")
    assert vocabulary.classes == ["cat", "dog", "emu"] and index.tolist() == [0, 1, 0, 2]
    assert vocabulary.problem == "multiclass"
    index, vocabulary = encode_labels([True, False, True], "x")
    assert vocabulary.classes == ["False", "True"] and vocabulary.problem == "binary" and index.tolist() == [1, 0, 1]
    _, vocabulary = encode_labels(["2", "10", "1"], "x")  # codes stored as text: ordered as numbers
    assert vocabulary.classes == ["1", "2", "10"]
    with pytest.raises(DataError, match="looks like an id or a quantity"):
        encode_labels([str(i) for i in range(100)], "x")


def test_the_source_kind_is_told_from_the_path(tmp_path):
    from tasks.ingest.sources import detect_source

    (tmp_path / "t.tsv").write_text("a\tlabel\n1\tx\n")
    (tmp_path / "arr").mkdir()
    np.save(tmp_path / "arr" / "images.npy", np.zeros((2, 2, 2)))
    (tmp_path / "notes.txt").write_text("?")
    assert detect_source(None) == "digits" and detect_source(tmp_path / "t.tsv") == "table"
    assert detect_source(tmp_path / "arr") == "arrays"
    with pytest.raises(DataError, match="cannot tell what this file holds"):
        detect_source(tmp_path / "notes.txt")


def _png_claiming(width: int, height: int) -> bytes:
    """A small valid PNG whose IHDR is rewritten to claim width×height (its CRC fixed): a decompression bomb's
    header, refused before any pixel is decoded."""
    import io
    import zlib

    out = io.BytesIO()
    Image.new("L", (8, 8)).save(out, format="PNG")
    data = bytearray(out.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _hostile_arrays(folder, kind):
    folder.mkdir()
    np.save(folder / "labels.npy", np.zeros(4, np.int64))
    if kind == "petabytes":  # a header declaring 2**50 float64 images, then 64 bytes
        from numpy.lib import format as npy
        import io

        header = io.BytesIO()
        npy.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (2**50, 8, 8)})
        (folder / "images.npy").write_bytes(header.getvalue() + b"\0" * 64)
    elif kind == "npz":
        with (folder / "images.npy").open("wb") as handle:
            np.savez(handle, images=np.zeros((4, 8, 8)))


def _hostile_idx(folder, kind):
    folder.mkdir()
    header = struct.pack(">BBBB", 0, 0, 0x08, 3)
    if kind == "overflow":  # dimensions whose product overflows int64
        blob = header + struct.pack(">3I", 2**31, 2**31, 2**31) + b"\0" * 16
    elif kind == "corrupt":  # a gzip stream whose deflate data is garbage
        good = bytearray(gzip.compress(header + struct.pack(">3I", 4, 8, 8) + bytes(256)))
        good[12:20] = b"\xff" * 8
        blob = bytes(good)
    (folder / "train-images-idx3-ubyte").write_bytes(blob)
    (folder / "train-labels-idx1-ubyte").write_bytes(struct.pack(">BBBBI", 0, 0, 0x08, 1, 4) + bytes(4))


@pytest.mark.parametrize("make, message", [
    (lambda f: _hostile_arrays(f, "petabytes"), "images.npy is not a readable .npy array: ValueError: mmap length"),
    (lambda f: _hostile_arrays(f, "npz"), "images.npy: an .npz archive, not one array"),
    (lambda f: _hostile_idx(f, "overflow"), "truncated or padded IDX data: shape (2147483648, 2147483648, 2147483648)"),
    (lambda f: _hostile_idx(f, "corrupt"), "train-images-idx3-ubyte: cannot read (error: Error -3 while decompressing"),
])
def test_a_hostile_array_or_idx_file_is_a_data_error_naming_it(tmp_path, make, message):
    make(tmp_path / "data")
    with pytest.raises(DataError) as info:
        _ingest(tmp_path, path="data")
    assert message in str(info.value) and not info.value.retryable


def test_a_gzip_bomb_is_refused_before_it_is_inflated(tmp_path, monkeypatch):
    from tasks.ingest import sources

    monkeypatch.setattr(sources, "MAX_INFLATED_BYTES", 2**20)  # the same rule at 1 MiB instead of 4 GiB
    folder = tmp_path / "mnist"
    folder.mkdir()
    header = struct.pack(">BBBB", 0, 0, 0x08, 3) + struct.pack(">3I", 100_000, 8, 8)
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + bytes(100_000 * 64)))
    with pytest.raises(DataError, match=r"inflates to more than 0.000976562 GiB: refused \(a gzip bomb"):
        sources.read_idx_file(folder / "train-images-idx3-ubyte.gz")


def test_an_image_whose_header_claims_billions_of_pixels_is_named(tmp_path):
    for name in ("a", "b"):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        Image.new("L", (8, 8), 40).save(tmp_path / "imgs" / name / "ok.png")
    (tmp_path / "imgs" / "a" / "bomb.png").write_bytes(_png_claiming(20_000, 20_000))
    with pytest.raises(DataError, match=r"bomb.png: not a usable PNG or JPEG image \(DecompressionBombError"):
        _ingest(tmp_path, source="images", path="imgs")


@pytest.mark.parametrize("labels, message", [
    (["²", "1", "2"] * 10, None),  # a superscript digit is a name, not the number 2
    (["1" * 5000, "1", "2"] * 10, None),  # 5,000 digits: a name (int() refuses it, no float holds it)
    ([[1, 2], [3], [4]] * 10, "the labels hold lists"),
])
def test_labels_that_are_not_plain_numbers_are_names_or_refused_by_name(labels, message):
    from tasks.ingest.labels import encode_labels

    if message:
        with pytest.raises(DataError, match=message):
            encode_labels(labels, "x")
        return
    _, vocabulary = encode_labels(labels, "x")
    assert len(vocabulary.classes) == 3 and vocabulary.classes[:2] == ["1", "2"]


def test_a_second_label_column_is_refused_not_learnt_from(tmp_path):
    (tmp_path / "loans.csv").write_text("income,label,debt,label\n1,yes,2,yes\n3,no,4,no\n")
    with pytest.raises(DataError, match=r"the header names \['label'\] more than once"):
        _ingest(tmp_path, source="table", path="loans.csv")


def test_a_parquet_file_declaring_more_rows_than_memory_allows_is_refused_before_reading(tmp_path):
    """100 million rows of one repeated value: a file of under a megabyte that pandas would inflate to 1.6 GB."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = 100_000_000
    table = pa.table({"x": pa.repeat(pa.scalar(1.0), rows), "label": pa.repeat(pa.scalar("a"), rows)})
    pq.write_table(table, tmp_path / "bomb.parquet", compression="zstd", row_group_size=rows // 4)
    del table
    assert (tmp_path / "bomb.parquet").stat().st_size < 2**20
    began = time.monotonic()
    with pytest.raises(DataError, match=r"bomb.parquet: declares 100,000,000 rows × 2 columns, about 1,526 MB in "
                                        r"memory, over ingest.max_table_mb \(1,024 MB\): refused before reading"):
        _ingest(tmp_path, source="table", path="bomb.parquet")
    assert time.monotonic() - began < 5


def test_a_csv_larger_than_max_table_mb_and_a_reserved_column_name_are_refused_by_name(tmp_path):
    (tmp_path / "loans.csv").write_text("income,row_md5,label\n" + "1,x,yes\n2,y,no\n" * 2000)
    with pytest.raises(DataError, match=r"loans.csv: holds 30,021 bytes, about 0.029 MB in memory, over "
                                        r"ingest.max_table_mb \(0.01 MB\)"):
        _ingest(tmp_path, source="table", path="loans.csv", max_table_mb=0.01)
    with pytest.raises(DataError, match=r"feature column\(s\) \['row_md5'\] use a name the pipeline gives its own"):
        _ingest(tmp_path, source="table", path="loans.csv")


GZIP_MAGIC = b"\x1f\x8b"


def _reads_or_refuses(read, path, budget_s: float = 0.5) -> str:
    """`read(path)`: "read" or "refused" (a DataError); anything else fails the test. CPU time under `budget_s`."""
    began = time.process_time()
    try:
        read(path)
        outcome = "read"
    except DataError:
        outcome = "refused"
    took = time.process_time() - began
    assert took < budget_s, f"{path.name}: {took:.2f} s of CPU"
    return outcome


def test_mutated_idx_and_gzip_headers_are_read_or_refused_by_name_quickly(tmp_path, digits):
    """600 IDX files, gzipped or not, with their gzip and IDX headers (and some anywhere) broken: each is read or a
    DataError, within 0.5 s of CPU; never another exception, never a hang."""
    from tasks.ingest.sources import read_idx_file
    from tests.support.mutants import mutants

    images = digits[0][:50]
    plain, packed = tmp_path / "plain-images-idx3-ubyte", tmp_path / "packed-images-idx3-ubyte.gz"
    write_idx(plain, images, False)
    write_idx(packed, images, True)
    outcomes = []
    for n, body in enumerate(mutants(plain.read_bytes(), 200, seed=5, region=(0, 16))
                             + mutants(packed.read_bytes(), 200, seed=6, region=(0, 40))
                             + mutants(packed.read_bytes(), 200, seed=7)):
        suffix = ".gz" if body[:2] == GZIP_MAGIC else ""
        path = tmp_path / f"m{n}-images-idx3-ubyte{suffix}"
        path.write_bytes(body)
        outcomes.append(_reads_or_refuses(read_idx_file, path))
        path.unlink()
    assert outcomes.count("refused") > 300 and "read" in outcomes


def test_mutated_parquet_metadata_is_read_or_refused_by_name_quickly_by_ingest_and_scoring(tmp_path):
    """300 Parquet files with their footer (the metadata: schema, row counts, offsets) broken, and 100 anywhere:
    ingest and scoring each read them or refuse them with a DataError, within 0.5 s of CPU."""
    import pandas as pd

    from jobs.score.reader import chunks
    from tasks.common.tables import read_table
    from tests.support.mutants import mutants

    frame = pd.DataFrame({"income": np.arange(60.0), "city": ["a", "b", "c"] * 20, "label": ["yes", "no"] * 30})
    original = tmp_path / "table.parquet"
    frame.to_parquet(original)
    body = original.read_bytes()
    footer = int.from_bytes(body[-8:-4], "little") + 8  # the metadata, its length and the magic
    outcomes = []
    for n, mutant in enumerate(mutants(body, 300, seed=8, region=(len(body) - footer, len(body)))
                               + mutants(body, 100, seed=9)):
        path = tmp_path / f"m{n}.parquet"
        path.write_bytes(mutant)
        outcomes.append(_reads_or_refuses(lambda p: read_table(p, "label"), path))
        outcomes.append(_reads_or_refuses(lambda p: list(chunks(p, 16)), path))
        path.unlink()
    assert outcomes.count("refused") > 400 and "read" in outcomes


@pytest.mark.parametrize("plant", ["fifo", "link out", "dangling link", "device"])
def test_an_image_folder_entry_that_is_not_a_regular_file_inside_it_is_refused_unopened(tmp_path, plant):
    """A FIFO named x.png blocked ingest for ever; a link to /etc/passwd was read. Each is now refused by name."""
    import os

    from PIL import Image

    folder = tmp_path / "pets"
    for name in ("cat", "dog"):
        (folder / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(folder / name / f"{i}.png")
    bad = folder / "cat" / "x.png"
    if plant == "fifo":
        os.mkfifo(bad)
    else:
        bad.symlink_to({"link out": "/etc/passwd", "dangling link": str(folder / "gone.png"),
                        "device": "/dev/zero"}[plant])
    began = time.monotonic()
    with pytest.raises(DataError, match=r"x.png: not a regular file inside .*refused, never opened"):
        _ingest(tmp_path, source="images", path="pets")
    assert time.monotonic() - began < 10
