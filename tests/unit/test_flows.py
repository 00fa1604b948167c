"""The flow's own logic without running stages: overrides, what is retried, the workspace lock."""

import shutil
from pathlib import Path

import pytest
import yaml

from flows.dag import StageFailed
from flows.overrides import applied, overridden_text, parse_assignment
from flows.pipeline import WorkspaceBusy, _transient, pipeline
from tasks.common import stage_cli
from tasks.common.errors import ConfigError, DataError, PipelineError, PromotionError, ValidationFailed
from tasks.common.outputs import OUTCOME_ENV, StageOutcome

REPO = Path(__file__).resolve().parents[2]


def test_an_override_changes_the_value_and_keeps_every_comment():
    original = (REPO / "params.yaml").read_text()
    text = overridden_text(original, {"train.epochs": 5, "train.augment.rotation": 0.0, "ingest.source": "idx"})
    tree = yaml.safe_load(text)
    assert tree["train"]["epochs"] == 5 and tree["train"]["augment"]["rotation"] == 0.0 and tree["ingest"]["source"] == "idx"
    comments = [line.split("#", 1)[1] for line in original.splitlines() if "#" in line]
    assert all(c in text for c in comments)
    assert len(text.splitlines()) == len(original.splitlines())  # every key is in params.yaml: values change in place


def test_an_override_of_a_key_the_file_leaves_at_its_default_adds_it():
    text = overridden_text("train:\n  epochs: 3  # short\n", {"train.augment.rotation": 0.0})
    assert yaml.safe_load(text) == {"train": {"epochs": 3, "augment": {"rotation": 0.0}}} and "# short" in text


def test_unknown_or_invalid_overrides_are_refused_and_params_yaml_is_put_back(tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copyfile(REPO / "params.yaml", params)
    original = params.read_bytes()
    with pytest.raises(ConfigError, match="refused: train.epoch: Extra inputs are not permitted"):
        with applied(params, {"train.epoch": 5}):
            pass
    with pytest.raises(ConfigError, match="refused: train.epochs: Input should be greater than or equal to 1"):
        with applied(params, {"train.epochs": -1}):
            pass
    with pytest.raises(RuntimeError, match="a stage blew up"):
        with applied(params, {"train.epochs": 3}):
            assert yaml.safe_load(params.read_text())["train"]["epochs"] == 3
            raise RuntimeError("a stage blew up")
    assert params.read_bytes() == original


def test_set_values_are_read_as_yaml():
    assert parse_assignment("train.epochs=20") == ("train.epochs", 20)
    assert parse_assignment("train.lr=0.001") == ("train.lr", 0.001)
    assert parse_assignment("ingest.image_size=[16, 16]") == ("ingest.image_size", [16, 16])
    assert parse_assignment("ingest.source=idx") == ("ingest.source", "idx")


class _State:
    def __init__(self, data):
        self.data = data


@pytest.mark.parametrize("error", [ConfigError, DataError, ValidationFailed, PromotionError])
def test_a_stage_reports_its_error_class_and_that_retrying_cannot_help(error, tmp_path, monkeypatch):
    outcome_file = tmp_path / "outcome.json"
    monkeypatch.setenv(OUTCOME_ENV, str(outcome_file))
    (tmp_path / "params.yaml").write_text("{}")

    def failing(params, layout):
        raise error("what went wrong")

    assert stage_cli.main("validate", failing, ["--root", str(tmp_path)]) == error.exit_code
    outcome = StageOutcome.read(outcome_file)
    assert (outcome.ok, outcome.error, outcome.message, outcome.retryable) == (False, error.__name__, "what went wrong",
                                                                               False)


def test_retryability_is_a_property_of_the_error_class(tmp_path, monkeypatch):
    class Flaky(PipelineError):  # a class of its own that says retrying helps: no list of names to keep in step
        retryable = True

    monkeypatch.setenv(OUTCOME_ENV, str(tmp_path / "outcome.json"))
    (tmp_path / "params.yaml").write_text("{}")
    stage_cli.main("train", lambda params, layout: (_ for _ in ()).throw(Flaky("lost the store")), ["--root", str(tmp_path)])
    outcome = StageOutcome.read(tmp_path / "outcome.json")
    assert outcome.error == "Flaky" and outcome.retryable is True


def test_a_crash_is_reported_by_its_class_and_first_line_as_worth_retrying_and_still_raised(tmp_path, monkeypatch):
    """A crash (no pipeline error) keeps its traceback, and the flow's message names it (the flow no longer reads the
    stage's printed lines: flows/dag.py repro_stage); an interrupted stage is not worth retrying."""
    monkeypatch.setenv(OUTCOME_ENV, str(tmp_path / "outcome.json"))
    (tmp_path / "params.yaml").write_text("{}")

    def crashing(params, layout):
        raise RuntimeError("CUDA out of memory\nTried to allocate 2.00 GiB")

    with pytest.raises(RuntimeError, match="CUDA out of memory"):
        stage_cli.main("train", crashing, ["--root", str(tmp_path)])
    outcome = StageOutcome.read(tmp_path / "outcome.json")
    assert (outcome.ok, outcome.error, outcome.message, outcome.retryable) == (False, "RuntimeError",
                                                                               "CUDA out of memory", True)

    def interrupted(params, layout):  # a Ctrl-C: DVC runs the stage command in the foreground, the flow waits on it
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        stage_cli.main("train", interrupted, ["--root", str(tmp_path)])
    outcome = StageOutcome.read(tmp_path / "outcome.json")
    assert (outcome.ok, outcome.error, outcome.retryable) == (False, "KeyboardInterrupt", False)  # not retried


def test_a_finished_stage_reports_its_figures(tmp_path, monkeypatch):
    from dataclasses import dataclass

    @dataclass
    class Result:
        rows: int
        accuracy: float

    monkeypatch.setenv(OUTCOME_ENV, str(tmp_path / "outcome.json"))
    (tmp_path / "params.yaml").write_text("{}")
    assert stage_cli.main("ingest", lambda params, layout: Result(10, 0.5), ["--root", str(tmp_path)]) == 0
    assert StageOutcome.read(tmp_path / "outcome.json").result == {"rows": 10, "accuracy": 0.5}


@pytest.mark.parametrize("transient", [True, False])
def test_the_flow_retries_exactly_what_the_stage_called_retryable(transient):
    assert _transient(None, None, _State(StageFailed("stage 'x' failed", "SomeError", transient))) is transient
    assert _transient(None, None, _State(ValueError("not a stage failure"))) is False


def test_a_held_workspace_refuses_a_second_run_before_anything_runs(tmp_path):
    from filelock import FileLock

    with FileLock(str(tmp_path / ".pipeline.lock")):
        with pytest.raises(WorkspaceBusy, match="refused rather than interleaved"):
            pipeline.fn(root=str(tmp_path))


def test_data_a_dvc_file_tracks_is_not_a_stage_the_pipeline_runs(tmp_path, monkeypatch):
    """`mlops score` tracks its predictions with a `.dvc` file; DVC's graph holds it as a stage without a command.
    The flow took it for one and crashed on its name (a path) when it had stages to run."""
    import subprocess

    from dvc.repo import Repo

    from flows.dag import changed_stages, stage_order

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "dvc.yaml").write_text("stages:\n  make:\n    cmd: echo made > out.txt\n    outs: [out.txt]\n")
    (tmp_path / "predictions").mkdir()
    (tmp_path / "predictions" / "rows.csv").write_text("label\na\n")
    with Repo.init(str(tmp_path)) as repo:
        repo.add(str(tmp_path / "predictions" / "rows.csv"))
    assert (tmp_path / "predictions" / "rows.csv.dvc").is_file()
    (tmp_path / "predictions" / "rows.csv").write_text("label\nb\n")  # changed since it was tracked
    # DVC is asked about dvc.yaml's stages only (thousands of scoring outputs made its whole-project calls slow): a
    # `.dvc` file it cannot even read, among the predictions, is none of the pipeline's business
    (tmp_path / "predictions" / "unreadable.csv.dvc").write_text("outs: [{path: 1, md5: [}\n")
    monkeypatch.chdir(tmp_path)  # as the flow runs: DVC names stages relative to the working directory
    assert stage_order(tmp_path) == ["make"]
    assert changed_stages(tmp_path) == {"make"}


def test_the_stages_a_run_is_to_execute_are_told_before_its_overrides_are_applied(tmp_path):
    """What the warm host is told to import for (flows/dag.py stages_to_run): DVC's rule with the run's overrides,
    told without writing params.yaml. The stages are run in-process by DVC's API (repro_stage), from another working
    directory than the project's (stage names as dvc.yaml gives them, not relative to this process's directory)."""
    import subprocess

    from dvc.repo import Repo

    from flows.dag import repro_stage, stage_order, stages_to_run

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "params.yaml").write_text("first: {x: 1}\nsecond: {y: 1, z: 1}\n")
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  first:\n    cmd: cat src.txt > one.txt\n    deps: [src.txt]\n    params: [first.x]\n"
        "    outs: [one.txt]\n"
        "  second:\n    cmd: cat one.txt > two.txt\n    deps: [one.txt]\n    params: [second]\n    outs: [two.txt]\n")
    (tmp_path / "src.txt").write_text("source\n")
    Repo.init(str(tmp_path)).close()
    assert stages_to_run(tmp_path) is None  # never run: all of them, without asking DVC
    for stage in stage_order(tmp_path):
        assert repro_stage(tmp_path, stage).executed
    assert stages_to_run(tmp_path) == [] and not repro_stage(tmp_path, "first").executed
    assert stages_to_run(tmp_path, {"second.z": 1}) == []  # the value it has
    assert stages_to_run(tmp_path, {"second.z": 2}) == ["second"]  # a key of a section the stage reads whole
    assert stages_to_run(tmp_path, {"first.x": 2}) == ["first", "second"]  # and all after it
    (tmp_path / "params.yaml").write_text("first: {x: 5}\nsecond: {y: 1, z: 1}\n")
    assert stages_to_run(tmp_path) == ["first", "second"]
    assert stages_to_run(tmp_path, {"first.x": 1}) == []  # an override back to the value the run recorded
    (tmp_path / "src.txt").write_text("edited\n")  # a dep changed: more than params
    assert stages_to_run(tmp_path, {"first.x": 1}) == ["first", "second"]
    (tmp_path / "dvc.lock").write_text("stages: [\n")  # a broken lock: not told (the host imports for all)
    assert stages_to_run(tmp_path) is None


def test_a_stage_command_ended_by_ctrl_c_stops_the_run_and_a_failing_one_fails_its_stage(tmp_path):
    """DVC runs a stage's command in the foreground, ignoring SIGINT meanwhile, so a Ctrl-C ends the command and
    not the flow: the flow stops then, as the Ctrl-C meant (a failed stage would be retried)."""
    import subprocess

    from dvc.repo import Repo

    from flows.dag import repro_stage

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "dvc.yaml").write_text("stages:\n  stopped:\n    cmd: kill -INT $$\n    outs: [a.txt]\n"
                                       "  failing:\n    cmd: exit 3\n    outs: [b.txt]\n")
    Repo.init(str(tmp_path)).close()
    with pytest.raises(KeyboardInterrupt, match="stage 'stopped' was interrupted"):
        repro_stage(tmp_path, "stopped")
    with pytest.raises(StageFailed, match="stage 'failing' failed: .*exited with 3") as failed:
        repro_stage(tmp_path, "failing")
    assert failed.value.transient  # a crash without a pipeline error: worth retrying


@pytest.mark.timeout(120)
def test_a_fifo_in_the_data_source_is_named_before_dvc_would_block_opening_it(tmp_path):
    """DVC hashes every file of a stage's dep folders; opening a FIFO blocks for ever (`mlops run` hung before any
    stage). The pipeline's DVC checks refuse it first, naming it."""
    import os
    import subprocess

    from dvc.repo import Repo

    from flows.dag import changed_stages, repro_stage, stages_to_run
    from tasks.common.errors import DataError

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "sources").mkdir()
    (tmp_path / "sources" / "a.csv").write_text("x,label\n1,a\n")
    (tmp_path / "params.yaml").write_text("take: {x: 1}\n")
    (tmp_path / "dvc.yaml").write_text("stages:\n  take:\n    cmd: cp sources/a.csv out.csv\n    deps: [sources]\n"
                                       "    outs: [out.csv]\n")
    Repo.init(str(tmp_path)).close()
    assert repro_stage(tmp_path, "take").executed and changed_stages(tmp_path) == set()
    os.mkfifo(tmp_path / "sources" / "b.csv")
    for check in (changed_stages, stages_to_run):
        with pytest.raises(DataError, match=r"sources/b\.csv.*DVC would block"):
            check(tmp_path)


def test_dvc_locks_of_processes_that_are_gone_or_zombies_are_released_and_live_ones_kept(tmp_path):
    """A `dvc repro` killed with its run stays a zombie until reaped, and DVC counts a zombie as alive: the next run
    failed "is busy, it is being blocked by". The pipeline drops such entries (holding its own lock) first."""
    import json
    import os
    import signal
    import subprocess
    import time

    from flows.dag import release_dead_locks

    zombie = subprocess.Popen(["sleep", "60"])
    zombie.send_signal(signal.SIGKILL)
    time.sleep(0.2)  # killed, and not reaped (no wait()): a zombie of this process
    exited = subprocess.Popen(["true"])
    exited.wait()  # gone
    lock_dir = tmp_path / ".dvc" / "tmp"
    lock_dir.mkdir(parents=True)
    me = {"pid": os.getpid(), "cmd": "dvc repro --single-item train"}
    (lock_dir / "rwlock").write_text(json.dumps({
        "write": {"artifacts/evaluate/metrics.json": {"pid": zombie.pid, "cmd": "dvc repro --single-item evaluate"},
                  "artifacts/train/model.pt": me},
        "read": {"data/prepared": [{"pid": exited.pid, "cmd": "dvc repro --single-item evaluate"}, me]}}))
    try:
        dropped = release_dead_locks(tmp_path)
    finally:
        zombie.wait()
    assert len(dropped) == 2 and any(f"pid {zombie.pid}" in d for d in dropped), dropped
    assert json.loads((lock_dir / "rwlock").read_text()) == {
        "write": {"artifacts/train/model.pt": me}, "read": {"data/prepared": [me]}}
    assert release_dead_locks(tmp_path / "elsewhere") == []


def test_a_commands_flow_runs_send_no_heartbeats_but_to_the_users_own_server():
    """Prefect's heartbeat thread makes the end of every flow run wait up to 1 s; nothing reads the heartbeats of
    a command's runs on its own server or the project's, so they are off there, and kept on a server the user set."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY

    from flows.prefect_server import CommandServer

    default = PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value()
    assert default
    for origin, expected in (("project", None), ("user", default)):
        with CommandServer(origin, "http://127.0.0.1:9/api").ready():
            assert PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value() == expected, origin
    assert PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value() == default
