"""jobs/engine.py on this machine: one chunk in this process, more on a process per core; a worker that dies fails
the run at once instead of hanging it; `jobs.score.prepare` never fails whatever it is given."""

import os
import shutil
import time
from pathlib import Path

import pytest

from jobs import engine

REPO = Path(__file__).resolve().parents[2]


def _pid_of(chunk: int, dying: int = -1) -> tuple[int, int]:
    if chunk == dying:
        os._exit(9)  # as the kernel's OOM killer would leave it: no exception, no answer
    return chunk, os.getpid()


def test_one_chunk_runs_here_and_more_run_on_a_process_per_core():
    placed: dict = {}
    assert list(engine.run(_pid_of, [7], None, placed=placed)) == [(7, os.getpid())]
    assert placed["engine"] == "in-process"
    placed = {}
    found = list(engine.run(_pid_of, range(6), None, placed=placed))
    assert sorted(chunk for chunk, _ in found) == list(range(6))  # each once, in any order
    if engine.CORES > 1:
        assert placed["engine"] == f"{engine.CORES} local processes"
        assert os.getpid() not in {pid for _, pid in found}
    else:
        assert placed["engine"] == "in-process"
    placed = {}  # chunks that cost less to score than to send: all here
    assert {pid for _, pid in engine.run(_pid_of, range(6), None, placed=placed, spread=False)} == {os.getpid()}
    assert placed["engine"] == "in-process"


def _threads_of(chunk: int, threads: int = 1) -> tuple[int, int]:
    return chunk, threads


def test_chunks_scored_here_one_after_another_get_every_core_and_a_workers_one():
    """`alone`: the keywords a chunk scored in this process gets (nothing else runs beside it: ONNX Runtime may
    use every core); a chunk on a worker process gets the score function's default (one core's share)."""
    here = list(engine.run(_threads_of, range(3), None, spread=False, alone={"threads": engine.CORES}))
    assert sorted(here) == [(0, engine.CORES), (1, engine.CORES), (2, engine.CORES)]
    if engine.CORES > 1:
        spread = list(engine.run(_threads_of, range(6), None, alone={"threads": engine.CORES}))
        assert sorted(spread) == [(chunk, 1) for chunk in range(6)]


def _busiest(count: int, size: int, cores: int) -> int:
    """Items of the core that gets the most, chunks dealt to the cores in turn."""
    sizes = [min(size, count - start) for start in range(0, count, size)]
    return max(sum(sizes[core::cores]) for core in range(cores))


def test_image_chunks_are_as_many_for_every_core_and_never_larger_than_asked():
    assert engine.even_chunks(20_000, 4096, cores=2) == 3334  # 6 chunks, 3 a core (not 5: 3 against 2)
    assert engine.even_chunks(6000, 4096, cores=2) == 3000
    assert engine.even_chunks(64, 4096, cores=2) == 4096  # one chunk: scored in this process, nothing to start
    assert engine.even_chunks(20_000, 4096, cores=1) == 4096
    for count, at_most, cores in [(20_000, 4096, 2), (399, 2, 2), (399, 3, 2), (100_001, 4096, 16), (4097, 4096, 3),
                                  (9, 2, 4), (50_000, 1000, 7)]:
        size = engine.even_chunks(count, at_most, cores)
        assert 1 <= size <= at_most
        assert _busiest(count, size, cores) <= _busiest(count, at_most, cores)
        assert _busiest(count, size, cores) <= -(-count // cores) + size - 1  # within a chunk of an even share


@pytest.mark.skipif(engine.CORES == 1, reason="one core: every chunk runs in this process")
def test_a_worker_that_dies_fails_the_run_instead_of_hanging_it():
    from concurrent.futures.process import BrokenProcessPool  # loky's TerminatedWorkerError is one

    began = time.monotonic()
    with pytest.raises(BrokenProcessPool, match="terminated"):
        list(engine.run(_pid_of, range(6), None, dying=3))
    assert time.monotonic() - began < 30
    # and the next run gets fresh workers
    assert sorted(chunk for chunk, _ in engine.run(_pid_of, range(4), None)) == list(range(4))


_MARK = "a fresh interpreter's"


def _mark_of(chunk: int, dying: int = -1) -> tuple[int, int, str]:
    if chunk == dying:
        os._exit(9)
    return chunk, os.getppid(), _MARK


FORKED_RUN = f"""
import os, sys
sys.path.insert(0, {str(REPO)!r})
from concurrent.futures.process import BrokenProcessPool
import tests.unit.test_engine as t
from jobs import engine
t._MARK = "this process's"  # set before the workers start: a fork has it, a fresh interpreter does not
placed = {{}}
found = sorted(engine.run(t._mark_of, range(6), None, placed=placed))
assert placed["engine"] == f"{{engine.CORES}} local processes", placed
assert found == [(chunk, os.getpid(), "this process's") for chunk in range(6)], found
try:
    list(engine.run(t._mark_of, range(6), None, dying=3))
    raise SystemExit("a worker died and the run went on")
except BrokenProcessPool as err:
    assert "terminated" in str(err), err
assert sorted(c for c, _, _ in engine.run(t._mark_of, range(4), None)) == [0, 1, 2, 3]  # a new pool
print("forked")
"""


@pytest.mark.skipif(engine.CORES == 1, reason="one core: every chunk runs in this process")
def test_a_process_with_no_other_thread_forks_its_workers_with_what_it_imported():
    """A command run by the warm host starts its workers before its flow starts Prefect's threads: they are forks
    of it (every library imported, no interpreter to start), and one that dies still fails the run."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", FORKED_RUN], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "forked", (done.stdout, done.stderr[-3000:])


def test_prepare_never_fails(tmp_path):
    from jobs.score import prepare

    (tmp_path / "params.yaml").write_text("score: {chunk_rows: -1}\n")  # invalid: score reports it, not prepare
    (tmp_path / "scans").mkdir()
    (tmp_path / "scans" / "a.png").write_bytes(b"not a png")
    (tmp_path / "bad.parquet").write_text("not parquet")
    os.mkfifo(tmp_path / "drop.csv")  # opening it would block for ever: never opened
    (tmp_path / "project").mkdir()
    shutil.copy(REPO / "params.yaml", tmp_path / "project" / "params.yaml")
    for root in (tmp_path, tmp_path / "project", tmp_path / "no-project"):
        for path in (tmp_path / "missing", tmp_path / "scans", tmp_path / "params.yaml", tmp_path / "bad.parquet",
                     tmp_path / "drop.csv"):
            assert prepare(path, root) is None
