"""Where batch scoring's chunks and a sweep's trials run: on this machine by default, or on a Dask cluster
(`distributed`) given its address:
`local` starts one on this machine (a scheduler and one single-threaded worker process per core), anything else
(`tcp://host:8786`) is an existing scheduler. Dask was chosen over Ray by measuring both here (BENCHMARKS.md,
Engine): a sixth of Ray's install weight (43 against 256 MB), a fifth of its start-up (1.4 against 6.7 s), the
same throughput on this job.

With no address, an input of one chunk is scored in this process (nothing to start), a longer one in a process
per core (`local_processes`): decoding images and tokenizing texts is Python work that holds the GIL, so threads
did not help (20,000 PNGs: 2.32 s on a thread per core against 2.18 s in one, measured). A caller whose chunks
cost less to score than to send (a table of numbers, encoded a column at a time) keeps them here (`spread`).

Chunks are sent with their data, and the answers come back to this process, which writes them: a worker needs the
project's code (the same release), not this machine's files. At most `in_flight` chunks are out at a time, so
memory stays flat however large the input."""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Iterable, Iterator


def run(score: Callable, chunks: Iterable, address: str | None, in_flight: int = 0, placed: dict | None = None,
        spread: bool = True, alone: dict | None = None, **shared) -> Iterator:
    """`score(chunk, **shared)` for every chunk, its results as they finish (in any order). `shared` values (the
    model's bytes) are sent to each worker once. `placed["engine"]` says where they ran. `spread=False`: with no
    address, every chunk in this process (chunks that cost less to score than to send to another process).
    `alone`: more keywords for the chunks scored in this process, one after another, every core theirs (e.g. the
    threads a model may use: a worker process gets one core's share)."""
    placed = {} if placed is None else placed
    if not address:
        yield from _this_machine(score, iter(chunks), in_flight, shared, placed, spread, alone)
        return
    from distributed import as_completed

    placed["engine"] = address
    with connect(address) as client:
        workers = max(1, len(client.scheduler_info().get("workers", {})))
        limit = in_flight or 2 * workers
        shared = {name: client.scatter(value, broadcast=True) if isinstance(value, bytes) else value
                  for name, value in shared.items()}
        pending = as_completed()
        for chunk in chunks:
            pending.add(client.submit(score, chunk, **shared, pure=False))
            while pending.count() >= limit:
                yield next(pending).result()
        for finished in pending:
            yield finished.result()


def _this_machine(score: Callable, chunks: Iterator, in_flight: int, shared: dict, placed: dict,
                  spread: bool = True, alone: dict | None = None) -> Iterator:
    """One chunk in this process; more, on a process per core (`local_processes`) when `spread`, the next chunks
    read while the others are scored."""
    from concurrent.futures import FIRST_COMPLETED, wait

    first, second = next(chunks, None), next(chunks, None)
    if second is None or CORES == 1 or not spread:
        placed["engine"] = "in-process"
        yield from (score(chunk, **shared, **(alone or {})) for chunk in itertools.chain([first, second], chunks)
                    if chunk is not None)
        return
    placed["engine"] = f"{CORES} local processes"
    pool, pending = local_processes(score), set()
    for chunk in itertools.chain([first, second], chunks):
        pending.add(pool.submit(score, chunk, **shared))
        if len(pending) >= (in_flight or 2 * CORES):
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            yield from (future.result() for future in done)
    while pending:
        done, pending = wait(pending, return_when=FIRST_COMPLETED)
        yield from (future.result() for future in done)


CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def even_chunks(count: int, at_most: int, cores: int = CORES) -> int:
    """The chunk size, at most `at_most`, that splits `count` items into whole rounds over `cores` worker processes:
    20,000 images at most 4,096 a chunk are 6 chunks of 3,334 on 2 cores (3 each), not 5 of 4,096 (3 against 2,
    the run as long as its busiest worker). An input of one chunk stays one (scored in this process)."""
    needed = -(-count // at_most)
    if needed <= 1 or cores <= 1:
        return at_most
    rounds = -(-needed // cores)
    return -(-count // (rounds * cores))


def expect(score: Callable, address: str | None, chunks: int) -> None:
    """Say early how many chunks `score` will get: with no address and more than one, this machine's worker
    processes start now, and import `score`'s module, in the background, while the caller digests its input."""
    if not address and chunks > 1 and CORES > 1:
        local_processes(score)


_FORKED: list = []  # this process's pool of forked workers, once started


def local_processes(score: Callable):
    """A process per core that imported `score`'s module, started now if not running (in the background: call it
    early to have them ready when the work comes). Forked from this process while it runs no other thread (a
    command run by the warm host, before its flow starts Prefect's: the workers start in milliseconds with every
    library already imported, where a fresh interpreter takes 0.3 s of CPU and two were needed beside loky's
    resource tracker); kept for the process's life, and a worker that dies fails the run (BrokenProcessPool).
    Otherwise loky's reusable executor: fresh interpreters, not forks of this process and its threads (Prefect's
    among them), importing nothing of `__main__`, kept 10 s after their last chunk; a worker that dies fails the
    run (TerminatedWorkerError) instead of hanging it."""
    import threading

    if _FORKED and not _FORKED[0]._broken:  # noqa: SLF001 - concurrent.futures has no public "usable" check
        return _FORKED[0]
    if threading.active_count() == 1 and hasattr(os, "fork"):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(CORES, multiprocessing.get_context("fork"), initializer=_worker_started,
                                   initargs=(score.__module__,))
        pool.submit(int)  # forks every worker now, in this thread, before the pool's own thread starts
        _FORKED[:] = [pool]
        return pool
    from loky import get_reusable_executor

    pool = get_reusable_executor(max_workers=CORES, timeout=10, initializer=_worker_started,
                                 initargs=(score.__module__,))
    pool.submit(int)  # starts the workers that are not running
    return pool


def _worker_started(module: str) -> None:
    """A worker ignores Ctrl-C (the process that started it stops the work), dies with it however it dies, and
    imports the module whose function it will run."""
    import importlib
    import signal

    from tasks.common.stage_host import stop_with_parent

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop_with_parent()
    importlib.import_module(module)


@contextlib.contextmanager
def connect(address: str, workers: int = 0):
    """A Dask client: of a new local cluster (`local`: `workers` single-threaded processes, 0: one per core) or of
    the scheduler at `address`."""
    from distributed import Client, LocalCluster

    if address != "local":
        with Client(address, timeout="30s") as client:
            yield client
        return
    # Its worker processes print only CRITICAL: a worker whose heartbeat meets the scheduler already closing logs
    # an ERROR with a traceback (distributed's Worker.heartbeat, seen at the end of a sweep that went well), and a
    # task's own failure comes back to this process with its future anyway.
    cluster = LocalCluster(n_workers=workers or os.cpu_count() or 1, threads_per_worker=1, processes=True,
                           dashboard_address=None, silence_logs=50)
    try:
        with Client(cluster) as client:
            yield client
    finally:
        # The work is done and its results are in: how the workers wind down is Dask's business. A worker whose
        # process is slow to exit (threads a trial's libraries left) is killed after a grace period, and the comms
        # to it then close mid-write: Dask logs that with a traceback, on a run that went well.
        with _quiet("distributed", "tornado", "asyncio"):
            cluster.close(timeout=10)


@contextlib.contextmanager
def _quiet(*names: str):
    import logging

    known = [name for name in logging.root.manager.loggerDict if name.split(".")[0] in names]  # their children
    loggers = [logging.getLogger(name) for name in {*names, *known}]  # too: Dask sets some levels of its own
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
