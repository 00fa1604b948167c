import json
import shutil
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml

from tasks.common.config import AugmentParams
from tasks.common.dataset import load_split
from tasks.evaluate import classification_metrics, predict_proba
from tasks.nn.checkpoint import load_checkpoint
from tasks.train import train

REPO = Path(__file__).resolve().parents[2]
REPRODUCIBLE = ("best_epoch", "epochs_run", "val_loss", "val_accuracy")  # not wall time or memory


@pytest.fixture
def quick(params):
    return params.model_copy(update={"train": params.train.model_copy(update={"epochs": 4, "patience": 2})})


def _with(params, **train):
    return params.model_copy(update={"train": params.train.model_copy(update=train)})


def test_train_writes_checkpoint_metrics_and_an_mlflow_run(quick, prepared, tmp_path):
    result = train(quick, tmp_path, prepared, tmp_path / "train")
    assert result.device == "cpu" and 1 <= result.best_epoch <= result.epochs_run <= 4 and result.resumed_at_epoch == 0
    model, payload = load_checkpoint(tmp_path / "train" / "model.pt")
    assert payload["params"]["train"]["epochs"] == 4 and payload["seed"] == quick.base.seed
    test = load_split(prepared / "test")
    accuracy = classification_metrics(test.y, predict_proba(model, np.asarray(test.x)).argmax(1),
                                      [str(k) for k in range(10)])[0]["accuracy"]
    assert accuracy > 0.8  # four epochs already learn most digits
    client = mlflow.MlflowClient()
    run = client.get_run(json.loads((tmp_path / "train" / "run.json").read_text())["run_id"])
    assert run.data.params["train.epochs"] == "4" and run.data.params["train.augment.rotation"] == "10.0"
    assert {"git.commit", "data.train.md5", "params.md5", "version.torch", "device", "cpu_threads"} <= set(run.data.tags)
    for metric in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "samples_per_s"):
        assert len(client.get_metric_history(run.info.run_id, metric)) == result.epochs_run, metric
    assert run.data.metrics["best_peak_memory_mb"] > 50
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"history.csv", "curves.png"}
    lines = (tmp_path / "train" / "history.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,train_loss,train_accuracy,") and len(lines) == result.epochs_run + 1
    assert not (tmp_path / "train" / "last.pt").exists()  # the resume state goes once training is done


def test_streaming_from_memory_mapped_files_trains_exactly_like_preloading(quick, prepared, tmp_path, caplog):
    """Above train.preload_max_mb the inputs stay on disk and are read batch by batch: same batches, same weights."""
    import logging

    caplog.set_level(logging.INFO, logger="tasks.train")
    train(quick, tmp_path, prepared, tmp_path / "preloaded")
    assert "streaming" not in caplog.text
    train(_with(quick, preload_max_mb=0), tmp_path, prepared, tmp_path / "streamed")
    assert "streaming" in caplog.text
    a, b = (torch.load(tmp_path / d / "model.pt", weights_only=True)["state_dict"] for d in ("preloaded", "streamed"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_gives_bitwise_identical_weights_and_metrics(quick, prepared, tmp_path):
    train(quick, tmp_path, prepared, tmp_path / "a")
    train(quick, tmp_path, prepared, tmp_path / "b")
    a, b = (torch.load(tmp_path / d / "model.pt", weights_only=True)["state_dict"] for d in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in "ab")
    assert {k: ma[k] for k in REPRODUCIBLE} == {k: mb[k] for k in REPRODUCIBLE}
    train(_with(quick, augment=AugmentParams(rotation=0, scale=0, shift=0)), tmp_path, prepared, tmp_path / "c")
    c = torch.load(tmp_path / "c" / "model.pt", weights_only=True)["state_dict"]
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the comparison can tell runs apart


@pytest.mark.parametrize("model", ["mlp", "vit"])
def test_other_model_families_train(quick, prepared, tmp_path, model):
    cfg = _with(quick, model=model, epochs=3, patience=3, optimizer="sgd" if model == "mlp" else "adamw",
                schedule="onecycle", label_smoothing=0.1, lr=0.05 if model == "mlp" else 0.002)
    train(cfg, tmp_path, prepared, tmp_path / model)
    trained, _ = load_checkpoint(tmp_path / model / "model.pt")
    assert type(trained).__name__.lower() == model
    history = (tmp_path / model / "history.csv").read_text().splitlines()[1:]
    losses = [float(line.split(",")[1]) for line in history]
    assert losses[-1] < losses[0]


def test_two_project_roots_in_one_process_keep_their_own_stores(quick, prepared, tmp_path):
    """MLflow exports the tracking URI it is given; a second project must still get its own store and artifacts."""
    two = _with(quick, epochs=1)
    for name in ("a", "b"):
        train(two, tmp_path / name, prepared, tmp_path / name / "train")
        run_id = json.loads((tmp_path / name / "train" / "run.json").read_text())["run_id"]
        run = mlflow.MlflowClient().get_run(run_id)
        assert run.info.artifact_uri.startswith((tmp_path / name / "mlartifacts").as_uri())
        assert (tmp_path / name / "mlflow.db").exists()
    assert "MLFLOW_TRACKING_URI" not in os.environ


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here: the GPU path (CUDA, AMP autocast, "
                    "channels_last) runs on a machine with one")
def test_on_a_gpu_training_runs_on_cuda_with_autocast_and_learns(quick, prepared, tmp_path):
    result = train(_with(quick, device="cuda", amp=True, channels_last=True), tmp_path, prepared, tmp_path / "train")
    assert result.device.startswith("cuda") and result.val_accuracy > 0.9
    run = mlflow.MlflowClient().get_run(result.run_id)
    assert run.data.params["train.amp"] == "True"


def _project(root, prepared, **train_params):
    """A project folder the stage command line can run in: params.yaml plus the prepared splits."""
    import shutil

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"].update(train_params)
    root.mkdir(parents=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copytree(prepared, root / "data" / "prepared")
    return root


def _stage(root, *launcher, wait=True):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [*launcher, "-m", "tasks.train", "--root", str(root)]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _metrics(root):
    return json.loads((root / "artifacts" / "train" / "metrics.json").read_text())


SETTINGS = {"epochs": 15, "patience": 100}


@pytest.fixture(scope="module")
def whole(prepared, tmp_path_factory):
    """One uninterrupted single-process run of the stage command line: what resumed and DDP runs are held to."""
    root = _project(tmp_path_factory.mktemp("whole") / "project", prepared, **SETTINGS)
    assert _stage(root, sys.executable).returncode == 0
    return root


@pytest.mark.slow
def test_a_killed_run_resumes_and_ends_like_an_uninterrupted_one(whole, prepared, tmp_path):
    killed = _project(tmp_path / "killed", prepared, **SETTINGS)
    process = _stage(killed, sys.executable, wait=False)
    last = killed / "artifacts" / "train" / "last.pt"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if last.exists() and torch.load(last, weights_only=True)["epoch"] >= 3:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    interrupted_at = torch.load(last, weights_only=True)["epoch"]
    assert interrupted_at < SETTINGS["epochs"] and not (killed / "artifacts" / "train" / "model.pt").exists()

    resumed = _stage(killed, sys.executable)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from epoch {interrupted_at}" in resumed.stderr
    assert f"resumed_at_epoch={interrupted_at}" in resumed.stdout
    assert {k: _metrics(killed)[k] for k in REPRODUCIBLE} == {k: _metrics(whole)[k] for k in REPRODUCIBLE}
    a, b = (torch.load(r / "artifacts" / "train" / "model.pt", weights_only=True)["state_dict"] for r in (whole, killed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not last.exists()


@pytest.mark.slow
def test_torchrun_with_two_processes_trains_like_one(whole, prepared, tmp_path):
    ddp = _project(tmp_path / "ddp", prepared, **SETTINGS)
    done = _stage(ddp, sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    one, two = _metrics(whole)["val_accuracy"], _metrics(ddp)["val_accuracy"]
    assert two >= 0.95 and abs(one - two) <= 0.03
    mlflow.set_tracking_uri(f"sqlite:///{ddp / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["digits-pipeline"], output_format="list")
    assert len(runs) == 1 and runs[0].data.tags["world_size"] == "2"  # rank 0 alone logs
    assert len(mlflow.MlflowClient().get_metric_history(runs[0].info.run_id, "val_loss")) == SETTINGS["epochs"]


@pytest.mark.slow
def test_a_full_disk_is_named_leaves_nothing_half_written_and_the_next_run_finishes(prepared, tmp_path):
    """artifacts/train on a 256 KB tmpfs: the first checkpoint does not fit. The stage stops with one line naming
    the disk (exit 6, not retried), keeps no partial file, and once the disk has room an ordinary run finishes."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root (CI and this project's machines run as root)")
    root = _project(tmp_path / "project", prepared, epochs=1, patience=1)
    out = root / "artifacts" / "train"
    out.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(out)], check=True)
    try:
        full = _stage(root, sys.executable)
        assert full.returncode == 6, full.stdout + full.stderr
        line = [l for l in full.stderr.splitlines() if l.startswith("error in stage train")]
        assert line and "ResourceUnavailable: no space left on the disk holding" in line[0] and str(out) in line[0], \
            full.stderr[-3000:]
        assert "Traceback" not in full.stderr
        left = sorted(p.name for p in out.iterdir())
        assert left == ["run.json"], left  # the (failed) run's id, whole; no checkpoint, no partial or temp file
    finally:
        subprocess.run(["umount", str(out)], check=True)
    again = _stage(root, sys.executable)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (out / "model.pt").is_file() and (out / "metrics.json").is_file()
    runs = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}").search_runs(
        [mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}").get_experiment_by_name(
            "digits-pipeline").experiment_id])
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED"]  # the failed one is not left RUNNING
