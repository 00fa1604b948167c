"""A run's overrides never outlive it (tasks/common/params_journal.py): what a kill leaves behind is put back, byte
for byte, at the next start; a file the user edited since is left alone; a running run's journal is not touched."""

from __future__ import annotations

import shutil

import pytest
import yaml

from flows.overrides import applied, overridden_text
from tasks.common import params_journal
from tasks.common.params_journal import JOURNAL, PIPELINE_LOCK, recover
from tests.support.structure import REPO


@pytest.fixture
def params(tmp_path):
    path = tmp_path / "params.yaml"
    shutil.copyfile(REPO / "params.yaml", path)
    path.write_bytes(path.read_bytes() + b'# a comment and odd quoting the round trip would change: ""\n')
    return path


def _killed_mid_run(params) -> None:
    """What a SIGKILL during a run with overrides leaves: the journal written, the file overridden, no restore."""
    params_journal.override(params, overridden_text(params.read_text(), {"train.epochs": 7}), {"train.epochs": 7})


def test_a_finished_run_leaves_the_exact_bytes_and_no_journal(params):
    original = params.read_bytes()
    with applied(params, {"train.epochs": 7}):
        assert yaml.safe_load(params.read_text())["train"]["epochs"] == 7
        assert (params.parent / JOURNAL).is_file()
    assert params.read_bytes() == original and not (params.parent / JOURNAL).exists()


def test_the_next_start_restores_what_a_killed_run_left_and_says_so(params):
    original = params.read_bytes()
    _killed_mid_run(params)
    assert params.read_bytes() != original
    said = recover(params.parent)
    assert said and "restored byte for byte" in said and '"train.epochs": 7' in said
    assert params.read_bytes() == original and not (params.parent / JOURNAL).exists()
    assert recover(params.parent) is None  # nothing left to do


def test_a_file_edited_since_the_kill_is_left_as_the_user_made_it(params):
    _killed_mid_run(params)
    params.write_text(params.read_text().replace("epochs: 7", "epochs: 9"))
    edited = params.read_bytes()
    said = recover(params.parent)
    assert said and "left as it is" in said
    assert params.read_bytes() == edited and not (params.parent / JOURNAL).exists()


def test_the_journal_of_a_run_in_progress_is_not_touched(params):
    from filelock import FileLock

    _killed_mid_run(params)
    overridden = params.read_bytes()
    with FileLock(str(params.parent / PIPELINE_LOCK)):  # another run holds the workspace
        assert recover(params.parent) is None
        assert params.read_bytes() == overridden and (params.parent / JOURNAL).is_file()
    assert recover(params.parent, lock_held=False)
