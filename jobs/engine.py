"""Where batch scoring's chunks and a sweep's trials run: in this process by default, or on a Dask cluster
(`distributed`) given its address:
`local` starts one on this machine (a scheduler and one single-threaded worker process per core), anything else
(`tcp://host:8786`) is an existing scheduler. Dask was chosen over Ray by measuring both here (BENCHMARKS.md,
Engine): a sixth of Ray's install weight (43 against 256 MB), a fifth of its start-up (1.4 against 6.7 s), the
same throughput on this job.

Chunks are sent with their data, and the answers come back to this process, which writes them: a worker needs the
project's code (the same release), not this machine's files. At most `in_flight` chunks are out at a time, so
memory stays flat however large the input."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator


def run(score: Callable, chunks: Iterable, address: str | None, in_flight: int = 0, **shared) -> Iterator:
    """`score(chunk, **shared)` for every chunk, its results as they finish (in any order). `shared` values (the
    model's bytes) are sent to each worker once."""
    if not address:
        for chunk in chunks:
            yield score(chunk, **shared)
        return
    from distributed import as_completed

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


@contextlib.contextmanager
def connect(address: str, workers: int = 0):
    """A Dask client: of a new local cluster (`local`: `workers` single-threaded processes, 0: one per core) or of
    the scheduler at `address`."""
    from distributed import Client, LocalCluster

    if address != "local":
        with Client(address, timeout="30s") as client:
            yield client
        return
    cluster = LocalCluster(n_workers=workers or os.cpu_count() or 1, threads_per_worker=1, processes=True,
                           dashboard_address=None, silence_logs=40)
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
