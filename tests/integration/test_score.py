"""Batch scoring (jobs/score/, flows/score.py) on data the models never saw: a folder of PNG digits with a broken
file and a blank one among them, and a CSV table with bad rows; in this process, on a real Dask cluster (a
scheduler and two worker processes on loopback), killed mid-way, and through the command a user runs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.support.bento_builder import DIGIT_CLASSES, TABLE_CLASSES, table_rows
from tests.support.logs import assert_clean_log
from tests.support.processes import MLOPS, REPO, project_copy, project_env, run_in


def _shipped(tag: str, env: dict):
    """The BentoML model `tag` as jobs.score.model.stored_model reads it (in a process that reaches its store)."""
    from jobs.score.model import ShippedModel

    code = ("import json, sys; from jobs.score.model import stored_model; m = stored_model(sys.argv[1]); "
            "print(json.dumps({'path': str(m.onnx_path), 'meta': m.meta, 'tag': m.tag}))")
    done = subprocess.run([sys.executable, "-c", code, tag], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.splitlines()[-1])
    return ShippedModel(Path(found["path"]), found["meta"], found["tag"])


@pytest.fixture(scope="module")
def models(bento_store):
    """A digits model (8×8 images, 0..16) and a table model (width, height, stroke), as the store holds them."""
    env = bento_store.env
    return (_shipped(bento_store.models("digits")[0], env), _shipped(bento_store.models("table")[0], env), env,
            bento_store.home)


def _digit_folder(where: Path, count: int, extra: bool = True) -> Path:
    """`count` test digits (not trained on) as 32×32 PNGs in two sub-folders, plus a broken file and a blank image."""
    from PIL import Image
    from sklearn.datasets import load_digits

    images = load_digits().images[1400:1400 + count]
    for i, image in enumerate(images):
        folder = where / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((np.kron(image, np.ones((4, 4))) * 255 / 16).astype(np.uint8)).save(folder / f"d{i:05d}.png")
    if extra:
        (where / "a" / "broken.png").write_bytes(b"not a png at all")
        # a grey page: every pixel 104, whose float std comes out as 9e-16, not 0
        Image.fromarray(np.full((32, 32), 104, np.uint8)).save(where / "b" / "blank.png")
    return where


def _cfg(**changes):
    from tasks.common.config import load_params

    return load_params(REPO / "params.yaml").score.model_copy(update={"chunk_rows": 64, **changes})


def test_a_folder_of_images_scores_the_same_on_this_machine_and_on_a_dask_cluster(models, tmp_path, dask_cluster):
    from tasks.nn.latency import onnx_predictor
    from jobs.engine import CORES, even_chunks
    from jobs.score import predictions_of, score
    from tasks.shipped.imaging import decode_image

    digits, _, _, _ = models
    folder = _digit_folder(tmp_path / "scans", 300)
    here = score(folder, digits, tmp_path / "here", _cfg(), 16_000_000)
    there = score(folder, digits, tmp_path / "there", _cfg(), 16_000_000, address=dask_cluster)
    # five chunks of at most 64 files on the cluster; here a process per core (one core: this process), with as
    # many chunks for every core (six of 51 on two cores)
    assert here.engine == (f"{CORES} local processes" if CORES > 1 else "in-process")
    assert there.engine == dask_cluster and there.chunks == 5
    assert here.chunks == -(-302 // even_chunks(302, 64)) and here.chunks % CORES == 0
    ours, theirs = predictions_of(here), predictions_of(there)
    pd.testing.assert_frame_equal(ours, theirs)
    assert (here.rows, here.scored, here.quarantined) == (302, 300, 2)
    assert here.reasons == {"a constant image": 1, "not a readable PNG or JPEG image (Pillow cannot identify it)": 1}
    quarantine = pd.read_parquet(Path(here.output) / "quarantine.parquet")
    assert sorted(quarantine["file"]) == ["a/broken.png", "b/blank.png"]
    # each prediction is the shipped model on the image as the Bento decodes an upload
    files = list(ours["file"])
    assert files == sorted(files) and files[0] == "a/d00001.png"
    pixels = np.stack([decode_image(folder / f, (8, 8)) * 16 / 255 for f in files]).astype(np.float32)
    expected = onnx_predictor(digits.onnx_path)(pixels)
    np.testing.assert_allclose(ours[[f"p_{c}" for c in DIGIT_CLASSES]].to_numpy(), expected, atol=1e-6)
    assert list(ours["label"]) == [DIGIT_CLASSES[k] for k in expected.argmax(1)]
    assert set(ours["model"]) == {"digits-classifier"} and set(ours["model_version"]) == {"1"}
    assert set(ours["input_digest"]) == {here.input_digest}
    assert abs(sum(here.class_shares.values()) - 1) < 1e-9 and here.drift["samples"] == 300
    summary = json.loads((Path(here.output) / "summary.json").read_text())
    assert summary["scored"] == 300 and summary["model"]["tag"] == digits.tag


def test_a_text_model_reads_a_chunk_a_slice_at_a_time_with_the_answers_of_the_whole(bento_store):
    """A chunk of tickets goes through the text model TEXT_ROWS rows at a time (ONNX Runtime keeps a run's peak
    memory allocated), each slice cut after its own last token: the probabilities of the whole chunk read at once,
    untrimmed."""
    from jobs.score import chunk as scoring
    from tasks.shipped.rows import encode_frame
    from tests.support.own_data import tickets

    text = _shipped(bento_store.models("text")[0], bento_store.env)
    messages = tickets(600, seed=9)[["message"]]  # a few words each: fewer tokens than the model reads
    rows = encode_frame(messages.assign(message=messages["message"].str.split().str[:4].str.join(" ")),
                        text.meta["encoding"])
    session = scoring._session(text.tag, text.onnx_path.read_bytes())
    read = []

    class Watched:  # the real session; the shape of each input it is given, noted
        def run(self, names, feeds):
            read.append(feeds["images"].shape)
            return session.run(names, feeds)

        def get_inputs(self):
            return session.get_inputs()

    np.testing.assert_allclose(scoring._forward(Watched(), rows, text.meta), session.run(None, {"images": rows})[0],
                               atol=1e-5)
    assert [n for n, _ in read] == [scoring.TEXT_ROWS, scoring.TEXT_ROWS, 600 - 2 * scoring.TEXT_ROWS]
    assert all(width < rows.shape[1] for _, width in read)  # cut after the slice's last token


def _write_idx(path: Path, images: np.ndarray) -> None:
    """MNIST's IDX format: magic (0, 0, 0x08 = uint8, ndim), big-endian dimensions, the bytes."""
    header = bytes([0, 0, 0x08, images.ndim]) + b"".join(d.to_bytes(4, "big") for d in images.shape)
    path.write_bytes(header + images.astype(np.uint8).tobytes())


def test_images_npy_and_idx_files_score_as_ingest_reads_them(models, tmp_path):
    """The array forms ingest takes: images.npy (memory-mapped, any float or integer dtype) and IDX files, scored as
    stored (the model's 8×8 at 0..16); NaN, out-of-scale and constant images are quarantined with their reasons, a
    wrong image shape refuses the input by name."""
    from sklearn.datasets import load_digits

    from jobs.score import predictions_of, score
    from tasks.common.errors import DataError
    from tasks.nn.latency import onnx_predictor

    digits, _, _, _ = models
    images = load_digits().images[1400:1600]  # 200 unseen digits, 8×8, intensities 0..16
    arrays = tmp_path / "arrays"
    arrays.mkdir()
    bad = images[:3].copy()
    bad[0, 0, 0], bad[1, 0, 0], bad[2] = np.nan, 17, 5
    np.save(arrays / "images.npy", np.concatenate([images, bad]))
    scored = score(arrays, digits, tmp_path / "a", _cfg(chunk_rows=64), 16_000_000)
    assert (scored.rows, scored.scored, scored.quarantined, scored.chunks) == (203, 200, 3, 4)
    quarantine = pd.read_parquet(Path(scored.output) / "quarantine.parquet")
    assert list(quarantine["row"]) == [200, 201, 202] and list(quarantine["reason"]) == [
        "NaN or infinite intensities", "intensities outside the model's scale [0, 16] (got 0 to 17)",
        "a constant image (got every pixel 5)"]
    ours = predictions_of(scored)
    assert list(ours["row"]) == list(range(200))
    expected = onnx_predictor(digits.onnx_path)(images.astype(np.float32))
    np.testing.assert_allclose(ours[[f"p_{c}" for c in DIGIT_CLASSES]].to_numpy(), expected, atol=1e-6)
    assert (ours["label"] == [DIGIT_CLASSES[y] for y in load_digits().target[1400:1600]]).mean() > 0.8  # a small test model

    idx = tmp_path / "idx"
    idx.mkdir()
    _write_idx(idx / "t10k-images-idx3-ubyte", images[:100])
    _write_idx(idx / "u20k-images-idx3-ubyte", images[100:])
    from_idx = score(idx, digits, tmp_path / "b", _cfg(chunk_rows=64), 16_000_000)
    assert (from_idx.rows, from_idx.scored, from_idx.quarantined) == (200, 200, 0)
    pd.testing.assert_frame_equal(predictions_of(from_idx).drop(columns="input_digest"),
                                  ours.drop(columns="input_digest"))

    np.save(arrays / "images.npy", np.zeros((4, 28, 28)))
    with pytest.raises(DataError, match=r"images of shape \(28, 28\), but model .* takes \(8, 8\)"):
        score(arrays, digits, tmp_path / "c", _cfg(), 16_000_000)


def test_bad_table_rows_are_quarantined_with_reasons_and_too_many_fail_the_run(models, tmp_path):
    from jobs.score import TooManyBadRows, predictions_of, score, version_dir
    from jobs.score.reader import digest

    _, table, _, _ = models
    rows = table_rows(200, seed=1)
    rows[3]["width"] = "wide"  # text where a number belongs
    rows[7] = {"width": None, "height": None, "stroke": None}  # all missing
    rows[11]["height"] = 500.0  # far outside the training heights (5..13)
    rows[12]["height"] = None  # one missing value: imputed as in training
    frame = pd.DataFrame(rows).assign(extra="ignored")
    frame.to_csv(tmp_path / "new.csv", index=False)
    done = score(tmp_path / "new.csv", table, tmp_path, _cfg(), 16_000_000)
    assert (done.rows, done.scored, done.quarantined, done.imputed_cells) == (200, 197, 3, 1)
    assert done.chunks == 4 and done.engine == "in-process"  # numbers: cheaper to score here than to send
    reasons = pd.read_parquet(Path(done.output) / "quarantine.parquet").set_index("row")["reason"]
    assert len(reasons) == 3  # all in the first chunk: the others wrote no quarantine part
    assert reasons[3] == "column 'width': expected a number or null, got 'wide'"
    assert reasons[7] == "3 of 3 columns missing (at most 50% may be)"
    assert reasons[11].startswith("column 'height': outside the training range widened by 3 std devs [")
    assert reasons[11].endswith("(got 500.0)")
    predicted = predictions_of(done)
    assert list(predicted["row"]) == [r for r in range(200) if r not in (3, 7, 11)]
    assert set(predicted["label"]) <= set(TABLE_CLASSES)
    # the same rows as Parquet (without the text cell a Parquet column cannot hold): the same predictions
    frame.drop(index=3).assign(width=lambda f: f["width"].astype(float)).to_parquet(tmp_path / "new.parquet")
    as_parquet = predictions_of(score(tmp_path / "new.parquet", table, tmp_path, _cfg(), 16_000_000))
    pd.testing.assert_frame_equal(
        as_parquet.drop(columns=["row", "input_digest"]).reset_index(drop=True),
        predicted.drop(columns=["row", "input_digest"]).reset_index(drop=True))
    # past score.max_bad_fraction: the run fails, naming the reasons, and no version is written
    frame.loc[:40, "width"] = "wide"
    frame.to_csv(tmp_path / "worse.csv", index=False)
    with pytest.raises(TooManyBadRows, match=r"41 of 200 rows \(20.5%\) failed the checks; the limit is "
                                             r"score.max_bad_fraction = 5.0%.*40 × column 'width': expected a number"):
        score(tmp_path / "worse.csv", table, tmp_path, _cfg(), 16_000_000)
    assert not version_dir(tmp_path, "predictions", tmp_path / "worse.csv", digest(tmp_path / "worse.csv"),
                           table).exists()


def test_the_same_input_and_model_again_is_a_no_op_and_a_new_model_writes_a_new_version(models, tmp_path):
    from dataclasses import replace

    from jobs.score import score

    digits, _, _, _ = models
    folder = _digit_folder(tmp_path / "scans", 100, extra=False)
    first = score(folder, digits, tmp_path, _cfg(), 16_000_000)
    written = (Path(first.output) / "predictions.parquet").stat().st_mtime_ns
    nothing_set_aside = pd.read_parquet(Path(first.output) / "quarantine.parquet")  # there, empty, typed
    assert list(nothing_set_aside.columns) == ["file", "reason"] and nothing_set_aside.empty
    again = score(folder, digits, tmp_path, _cfg(), 16_000_000)
    assert again.already_scored and not first.already_scored and again.output == first.output
    assert (Path(first.output) / "predictions.parquet").stat().st_mtime_ns == written
    newer = replace(digits, meta={**digits.meta, "model_version": "2"})  # a new champion, the same input
    second = score(folder, newer, tmp_path, _cfg(), 16_000_000)
    assert not second.already_scored and Path(second.output).name == "digits-classifier-v2"
    assert Path(first.output).parent == Path(second.output).parent and Path(first.output).is_dir()


_SCORE_SLOWLY = """
import sys
from pathlib import Path
from tasks.common.config import load_params
from jobs.score import score
from jobs.score.model import ShippedModel
import json
model = ShippedModel(Path(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3])
cfg = load_params(Path("params.yaml")).score.model_copy(update={"chunk_rows": 2})
print(score(Path(sys.argv[4]), model, Path(sys.argv[5]), cfg, 16_000_000).output)
"""


def test_a_killed_run_resumes_from_its_finished_chunks_and_ends_with_the_same_output(models, tmp_path, caplog):
    from jobs.score import predictions_of, score

    digits, _, _, _ = models
    folder = _digit_folder(tmp_path / "scans", 397)  # 200 chunks of 2
    whole = score(folder, digits, tmp_path / "whole", _cfg(chunk_rows=2), 16_000_000)
    killed = subprocess.Popen([sys.executable, "-c", _SCORE_SLOWLY, str(digits.onnx_path), json.dumps(digits.meta),
                               digits.tag, str(folder), str(tmp_path / "resumed")], cwd=REPO)
    parts = Path(whole.output.replace(str(tmp_path / "whole"), str(tmp_path / "resumed")) + ".partial") / "parts"
    deadline = time.monotonic() + 120
    while len(list(parts.glob("chunk-*.json"))) < 20 and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    done_before = len(list(parts.glob("chunk-*.json")))
    assert 20 <= done_before < 200, f"{done_before} chunks were finished when it was killed"
    # the same kill, resumed with another score.chunk_rows: chunk 3 is other rows now, so nothing is reused
    shutil.copytree(tmp_path / "resumed", tmp_path / "rechunked")
    with caplog.at_level("WARNING"):
        rechunked = score(folder, digits, tmp_path / "rechunked", _cfg(chunk_rows=3), 16_000_000)
    assert rechunked.resumed_chunks == 0 and rechunked.chunks == 133
    assert "starts over" in caplog.text and "chunk_rows ({'chunk_rows': 2} then, {'chunk_rows': 3} now)" in caplog.text
    pd.testing.assert_frame_equal(predictions_of(rechunked), predictions_of(whole))
    resumed = score(folder, digits, tmp_path / "resumed", _cfg(chunk_rows=2), 16_000_000)
    assert resumed.resumed_chunks == done_before and resumed.chunks == 200
    pd.testing.assert_frame_equal(predictions_of(resumed), predictions_of(whole))
    assert (resumed.rows, resumed.scored, resumed.quarantined) == (whole.rows, whole.scored, whole.quarantined)
    assert not Path(resumed.output + ".partial").exists()


def test_the_command_scores_tracks_the_output_in_dvc_and_mlflow_and_a_rerun_does_nothing(models, tmp_path,
                                                                                          prefect_api):
    digits, _, store_env, _ = models
    root = project_copy(tmp_path / "project")
    env = {**project_env(tmp_path, prefect_api), "BENTOML_HOME": store_env["BENTOML_HOME"]}
    folder = _digit_folder(tmp_path / "tonight", 120)
    done = run_in(root, env, MLOPS, "score", "--input", str(folder), "--model", digits.tag,
                  "--address", "local", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "120 of 122 rows scored, 2 quarantined, with digits-classifier v1 (fp32-onnx)" in done.stdout
    assert_clean_log(done.stdout + done.stderr, "mlops score")
    output = next((root / "predictions").glob("tonight-*/digits-classifier-v1"))
    dvc_file = output.with_name("digits-classifier-v1.dvc")
    assert dvc_file.is_file() and (output / "predictions.parquet").is_file()
    pushed = [p for p in (root / ".dvc-remote").rglob("*") if p.is_file()]  # .dvc/config: url = ../.dvc-remote
    assert len(pushed) >= 3, pushed  # the version's files are in the DVC remote
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("digits-pipeline-scoring")
    run = client.search_runs([experiment.experiment_id])[0]
    assert run.data.metrics["scored"] == 120 and run.data.metrics["quarantined"] == 2
    assert run.data.tags["model.version"] == "1" and run.data.tags["output"] == str(output)
    logged = run.inputs.dataset_inputs[0].dataset
    assert logged.name == "tonight" and logged.digest == run.data.tags["input.digest"][:36]
    # with the project's own Prefect server running (as `mlops schedule` keeps it: .prefect/server.json) and no
    # PREFECT_API_URL, the command tracks its flow there instead of starting a temporary server
    (root / ".prefect").mkdir(exist_ok=True)
    (root / ".prefect" / "server.json").write_text(json.dumps({"pid": 0, "api_url": prefect_api}))
    own = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}
    before = _flow_runs(prefect_api, "score")
    again = run_in(root, own, MLOPS, "score", "--input", str(folder), "--model", digits.tag, timeout=600)
    assert again.returncode == 0 and "already scored, nothing written" in again.stdout, again.stderr[-2000:]
    assert f"flow runs tracked on the project's Prefect server: {prefect_api.removesuffix('/api')}" in again.stderr
    assert "temporary server" not in again.stdout + again.stderr and _flow_runs(prefect_api, "score") == before + 1
    assert len(client.search_runs([experiment.experiment_id])) == 1
    missing = run_in(root, env, MLOPS, "score", "--input", str(tmp_path / "nothing-here"),
                     "--model", digits.tag, timeout=600)
    assert missing.returncode == 2 and "no such file or folder" in missing.stderr
    _scored_by_the_warm_host(root, own, prefect_api, _digit_folder(tmp_path / "later", 30, extra=False), digits.tag)


def _scored_by_the_warm_host(root: Path, env: dict, prefect_api: str, folder: Path, model: str) -> None:
    """With the warm host the project's server keeps (as `mlops schedule` starts it), a command typed in a shell like
    the one that started it is run by a fork of that host: same output, exit codes and flow tracking."""
    from flows import DEFAULTS
    from flows.prefect_server import COMMAND_PRELOAD
    from tasks.common import stage_host

    # started as project_server starts it: in a process that imported flows/ (its Prefect defaults set)
    with stage_host.started(root, COMMAND_PRELOAD, ("PREFECT_",), env={**DEFAULTS, **env}) as host:
        (root / ".prefect" / "server.json").write_text(json.dumps({"pid": 0, "api_url": prefect_api, "host": host[
            stage_host.HOST_ENV], "python": sys.executable, "code_at": time.time()}))
        before = _flow_runs(prefect_api, "score")
        warm = run_in(root, env, MLOPS, "score", "--input", str(folder), "--model", model, timeout=600)
        assert warm.returncode == 0, warm.stderr[-3000:]
        assert "run by the warm host of the project's Prefect server" in warm.stderr
        assert "30 of 30 rows scored" in warm.stdout and _flow_runs(prefect_api, "score") == before + 1
        assert_clean_log(warm.stdout + warm.stderr, "mlops score")
        bad = run_in(root, env, MLOPS, "score", "--input", str(folder / "nope"), "--model", model, timeout=600)
        assert bad.returncode == 2 and "no such file or folder" in bad.stderr
        other = run_in(root, {**env, "PREFECT_HOME": str(root / "elsewhere")}, MLOPS, "score", "--input",
                       str(folder), "--model", model, timeout=600)  # another Prefect home: runs itself, saying why
        assert other.returncode == 0 and "PREFECT_HOME" in other.stderr and "warm host" not in other.stderr
        os.utime(root / "jobs" / "score" / "chunk.py")  # the code changed since the host imported it: not used
        edited = run_in(root, env, MLOPS, "score", "--input", str(folder), "--model", model, timeout=600)
        assert edited.returncode == 0 and "warm host" not in edited.stderr + edited.stdout


def _flow_runs(api: str, flow: str) -> int:
    import httpx

    body = {"flows": {"name": {"any_": [flow]}}}
    return httpx.post(f"{api}/flow_runs/count", json=body, timeout=10).raise_for_status().json()


def test_a_drop_folder_with_bad_and_hostile_files_scores_the_good_ones_and_names_the_rest(models, tmp_path,
                                                                                          prefect_api):
    """A drop folder as the world fills it: each bad file set aside with its reason (a ragged row, UTF-16 text, an
    empty file, a fake Parquet file, a 2 MB line), the files that are not regular files inside the folder never
    opened (a FIFO
    that would block for ever, links to /dev/zero and out of the folder, a dangling link), a 250-character name
    scored under a bounded output name; no traceback, exit 2 because some were not scored."""
    _, table, store_env, _ = models
    root = project_copy(tmp_path / "project")
    env = {**project_env(tmp_path, prefect_api), "BENTOML_HOME": store_env["BENTOML_HOME"]}
    drop = tmp_path / "incoming"
    drop.mkdir()
    good = pd.DataFrame(table_rows(50, seed=3))
    good.to_csv(drop / "good.csv", index=False)
    good.to_csv(drop / (("n" * 246) + ".csv"), index=False)
    (drop / "ragged.csv").write_text("width,height,stroke\n1.5,6,thin\n2,7,bold,extra,cells\n")
    (drop / "utf16.csv").write_bytes(good.to_csv(index=False).encode("utf-16"))
    (drop / "empty.csv").write_bytes(b"")
    (drop / "fake.parquet").write_bytes(b"PAR1 not really parquet PAR1")
    (drop / "one-long-line.csv").write_bytes(b"width,height,stroke\n" + b"1" * (2 * 2**20) + b",6,thin\n")  # 2 MB row
    os.mkfifo(drop / "fifo.csv")
    (drop / "zero.csv").symlink_to("/dev/zero")
    (drop / "passwd.csv").symlink_to("/etc/passwd")
    (drop / "gone.csv").symlink_to(drop / "nothing-there.csv")
    done = run_in(root, env, MLOPS, "score", "--input", str(drop), "--model", table.tag, "--no-push", timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode == 2, out[-3000:]
    assert out.count("50 of 50 rows scored, 0 quarantined") == 2  # good.csv, and the long name
    for name, why in (("ragged.csv", "not a readable csv table (ParserError"), ("utf16.csv", "not a readable csv table"),
                      ("empty.csv", "the file is empty"), ("fake.parquet", "not a readable parquet table"),
                      ("one-long-line.csv", "a line of 2,097,159 bytes, over score.max_line_kb (1,024 KB)")):
        assert f"not scored: {drop / name}: {why}" in done.stderr, (name, done.stderr[-3000:])
    for name in ("fifo.csv", "zero.csv", "passwd.csv", "gone.csv"):
        assert name not in out  # never listed, never opened
    assert "Traceback" not in out
    long_output = next((root / "predictions").glob("nnnn*"))
    assert len(long_output.name) == 100 + 1 + 12
