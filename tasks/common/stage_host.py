"""A warm host for the stage commands of one pipeline run: the heavy libraries imported once, each stage forked.

Every dvc.yaml stage is a new `python -m tasks.<stage>` process, and most of a small stage's time was importing
torch, MLflow, scikit-learn, Great Expectations (2 to 4 s a stage on 2 cores; benchmarks/orchestration.py). The
flow starts one host for its run (`started`): it listens on the Unix socket that PIPELINE_STAGE_HOST names and
imports those libraries once, while the first stages run. A stage command that finds it (`hand_off`) sends its
module, arguments, working directory, environment and standard streams; the host forks a child that runs the
module as `python -m` would, and the command exits with the child's status. DVC still starts the command, hashes
its outputs and writes dvc.lock: what ran and what is up to date stays DVC's alone. With no host (`dvc repro`
alone, a host not ready yet or gone) or with settings the libraries read when imported that differ from the
host's, the command runs the stage itself, as before.

The host is in the flow's process group (a kill of the run kills its stages) and stops with the flow; a stage
whose command is killed is interrupted (SIGINT, as a Ctrl-C would) and killed if it is still there 5 s later.

The project's own Prefect server keeps one for the commands typed while it runs (flows/prefect_server.py
`project_server`, cli/jobs.py `in_warm_host`), with Prefect and the jobs imported too.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

HOST_ENV = "PIPELINE_STAGE_HOST"  # the host's socket, for the stage commands of this run
# What each stage imports, over images, tables and text (a library not installed is skipped), in the order it needs
# them: the host imports those of the stages a run is to execute, in the stages' order (`preload_for`). Great
# Expectations alone is 2.5 s of CPU, which a run that does not validate need not spend. torch imports its compiler
# stack on first use, 1.6-1.9 s a stage when a stage imports it itself (py-spy over a cold run): train through
# `torch.use_deterministic_algorithms` (torch._inductor), evaluate through MLflow's model export
# (torch.export._trace), compress through the optimizer's constructor (torch._dynamo).
STAGE_IMPORTS = {
    "ingest": ("numpy", "pandas", "yaml", "PIL.Image", "pyarrow.parquet"),
    "prepare": ("numpy", "pandas", "yaml", "pyarrow.parquet", "sklearn.model_selection", "tokenizers"),
    "validate": ("numpy", "pandas", "yaml", "great_expectations", "scipy.stats", "mlflow",
                 "mlflow.store.tracking.sqlalchemy_store"),
    "train": ("numpy", "pandas", "yaml", "PIL.Image", "torch", "torch._inductor", "sklearn.linear_model",
              "sklearn.ensemble", "matplotlib.pyplot", "tokenizers", "mlflow",
              "mlflow.store.tracking.sqlalchemy_store"),
    "evaluate": ("numpy", "pandas", "yaml", "PIL.Image", "torch", "torch.export._trace", "sklearn.linear_model",
                 "sklearn.ensemble", "sklearn.metrics", "scipy.stats", "matplotlib.pyplot", "mlflow",
                 "mlflow.store.tracking.sqlalchemy_store", "mlflow.store.model_registry.sqlalchemy_store"),
    "compress": ("numpy", "pandas", "yaml", "torch", "torch._dynamo", "matplotlib.pyplot", "mlflow", "onnx",
                 "onnxruntime", "torch_pruning", "skl2onnx"),
    "package": ("numpy", "pandas", "yaml", "mlflow", "mlflow.store.model_registry.sqlalchemy_store", "onnx",
                "onnxruntime", "bentoml"),
    "promote": ("numpy", "pandas", "yaml", "mlflow", "mlflow.store.model_registry.sqlalchemy_store", "bentoml"),
}


def preload_for(stages: list[str] | None = None) -> tuple[str, ...]:
    """The modules the given stages import, each once, in the stages' order; every stage's when not told which (or
    told of one this table does not know)."""
    if stages is None or any(stage not in STAGE_IMPORTS for stage in stages):
        stages = list(STAGE_IMPORTS)
    return tuple(dict.fromkeys(name for stage in stages for name in STAGE_IMPORTS[stage]))


PRELOAD = preload_for()  # every stage's
# Settings libraries read when they are imported (OpenMP's threads, BentoML's home, MLflow's log level, ...): a
# stage whose values differ from the host's would not get its own, so it runs itself.
IMPORT_TIME = ("OMP_", "MKL_", "KMP_", "OPENBLAS_", "TORCH_", "CUDA_", "BENTOML_", "MLFLOW_LOGGING_LEVEL",
               "MPLBACKEND", "PYTHON", "GX_")
STARTED, REFUSED = b"S", b"R"


@dataclass
class _Stage:
    conn: socket.socket  # its command's connection: the exit status goes back on it
    exited: int | None  # a pidfd, readable once the stage's process has ended (Linux); None: polled
    interrupted: float | None = None  # when its command went away (monotonic): interrupted then, killed if it stays


GRACE_S = 5.0  # a stage whose command is gone gets SIGINT (it ends its runs as on a Ctrl-C), then SIGKILL after this


@contextmanager
def for_run(root: Path, stages: list[str] | None = None) -> Iterator[None]:
    """The stage commands of this process's run go to a host while the block runs: the one PIPELINE_STAGE_HOST
    already names (set empty: none, every stage in its own process), else one started here (`started`) that imports
    what `stages` need (all of them when None; none started when the run is to execute no stage)."""
    if HOST_ENV in os.environ or stages == []:
        yield
        return
    with started(root, stages=stages) as env:
        os.environ.update(env)  # the commands DVC starts inherit it
        try:
            yield
        finally:
            os.environ.pop(HOST_ENV, None)


@contextmanager
def started(root: Path, also: tuple[str, ...] = (), settings: tuple[str, ...] = (),
            env: dict[str, str] | None = None, stages: list[str] | None = None) -> Iterator[dict[str, str]]:
    """A host for the stage commands run under `root` while the block runs; yields the environment that points
    them at it. Its imports take a few seconds; a command that comes meanwhile imports what is still missing.
    `stages`: those whose imports it makes first (`preload_for`: all when None); `also`: modules it imports after
    them; `settings`: prefixes of more import-time settings a command must share with it (those `also` reads when
    imported); `env`: its environment (default: this process's)."""
    folder = Path(tempfile.mkdtemp(prefix="stage-host-"))  # a socket's path must be short (108 bytes)
    address = folder / "host.sock"
    modules = (*preload_for(stages), *also)
    proc = subprocess.Popen([sys.executable, "-m", "tasks.common.stage_host", str(address), ",".join(modules),
                             ",".join(settings)], cwd=root, env=env, stdin=subprocess.DEVNULL,
                            preexec_fn=stop_with_parent)
    try:
        yield {HOST_ENV: str(address)}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for leftover in folder.iterdir():
            leftover.unlink()
        folder.rmdir()


def hand_off(module: str, address: str | None = None) -> int | None:
    """In a stage command: have the run's host (or the one at `address`) run `module` with this process's arguments,
    directory, environment and streams; its exit status. None when there is no host to take it (the command then
    runs the stage)."""
    address = address or os.environ.get(HOST_ENV)
    if not address:
        return None
    env = {key: value for key, value in os.environ.items() if key != HOST_ENV}
    body = json.dumps({"module": module, "argv": sys.argv, "cwd": os.getcwd(), "env": env}).encode()
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(address)
        socket.send_fds(conn, [struct.pack("!I", len(body)) + body], _streams())
        answer = conn.recv(1)
    except OSError:  # no host listening (not ready yet, or gone): run here
        conn.close()
        return None
    if answer != STARTED:  # refused (other import-time settings), or gone before it started the stage
        if answer == REFUSED:
            differ = conn.recv(4096).decode(errors="replace")
            print(f"{module} runs in its own process: the stage host was started with other values of {differ}",
                  file=sys.stderr)
        conn.close()
        return None
    with conn:
        status = _received(conn, 4)
    if status is None:
        print(f"the stage host ({address}) stopped before {module} finished", file=sys.stderr)
        return 1
    code = struct.unpack("!i", status)[0]
    return code if code >= 0 else 128 - code  # killed by a signal: the shell's convention


def serve(address: str, modules: tuple[str, ...] = PRELOAD, prefixes: tuple[str, ...] = ()) -> None:
    """The host: import `modules`, listen on `address`, fork a child per stage command (until SIGTERM);
    `prefixes`: more import-time settings than IMPORT_TIME a command must share with it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the run's stages; the run stops the host
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # as tasks/common/stage_cli.py sets it for a stage
    settings = _import_time(os.environ, prefixes)  # before the imports, which set some of their own (KMP_*)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address + ".tmp")
    listener.listen()
    os.rename(address + ".tmp", address)  # commands find the socket once it listens
    stages: dict[int, _Stage] = {}  # by the stage's pid
    for name in modules:  # a command that comes meanwhile is forked between two imports: it imports the rest
        _preload(name)
        _serve_once(listener, stages, settings, prefixes, timeout=0)
    Path(address + ".warm").touch()  # every import done (benchmarks wait for it)
    while True:
        _serve_once(listener, stages, settings, prefixes)


def _serve_once(listener: socket.socket, stages: dict[int, _Stage], settings: dict, prefixes: tuple[str, ...],
                timeout: float = 0.2) -> None:
    """Wait for a new command, a stage's end (its pidfd) or a command gone; the timeout polls where no pidfd."""
    import selectors

    with selectors.DefaultSelector() as selector:
        selector.register(listener, selectors.EVENT_READ)
        for pid, stage in stages.items():
            if stage.interrupted is None:
                selector.register(stage.conn, selectors.EVENT_READ, pid)
            if stage.exited is not None:
                selector.register(stage.exited, selectors.EVENT_READ)
        ready = [(key.fileobj, key.data) for key, _ in selector.select(timeout=timeout)]
    for source, pid in ready:
        if source is listener:
            _accept(listener, stages, settings, prefixes)
        elif isinstance(source, socket.socket) and not source.recv(1):  # the command is gone (killed): its stage too
            stages[pid].interrupted = time.monotonic()
            _signal(pid, signal.SIGINT)
    for pid, stage in stages.items():
        if stage.interrupted is not None and time.monotonic() - stage.interrupted > GRACE_S:
            _signal(pid, signal.SIGKILL)
    _reap(stages)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _accept(listener: socket.socket, stages: dict[int, _Stage], settings: dict, prefixes: tuple[str, ...]) -> None:
    conn, _ = listener.accept()
    try:
        head, fds, _, _ = socket.recv_fds(conn, 65536, 3)
        size = struct.unpack("!I", head[:4])[0]
        body = head[4:] + (_received(conn, size - len(head) + 4) or b"")
        request = json.loads(body)
    except (OSError, ValueError, struct.error):
        conn.close()
        return
    asked = _import_time(request["env"], prefixes)
    if asked != settings:
        differ = sorted(key for key in asked.keys() | settings.keys() if asked.get(key) != settings.get(key))
        conn.sendall(REFUSED + ", ".join(differ).encode())
        conn.close()
        for fd in fds:
            os.close(fd)
        return
    conn.sendall(STARTED)
    # The host's objects out of the child's garbage collections (Python's advice for a fork without exec): a full
    # collection in the child walks the host's whole heap, writing to every object and so copying its pages: 0.6 s
    # of a command's 1.8 s, measured in `mlops score` on the warm host
    gc.freeze()
    pid = os.fork()
    if pid == 0:
        listener.close()
        conn.close()
        for other in stages.values():
            other.conn.close()
            if other.exited is not None:
                os.close(other.exited)
        _child(request, fds)  # never returns
    for fd in fds:
        os.close(fd)
    stages[pid] = _Stage(conn, _pidfd(pid))


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # not Linux ≥ 5.3
        return None


def _child(request: dict, fds: list[int]) -> None:
    """In the forked child: become the command (streams, directory, environment, arguments), run its module, exit
    as the interpreter would (exit handlers, flushed streams) but without finalizing the libraries the host
    imported: their native thread pools belong to the host (torch's and ONNX Runtime's abort when torn down in a
    fork), as Python's own multiprocessing does."""
    import atexit
    import runpy

    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in any Python process
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = list(request["argv"])
    sys.path[0] = request["cwd"]
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=stream.isatty(), write_through=unbuffered or stream is sys.stderr)
    code = 1
    try:
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        if not isinstance(done.code, (int, type(None))):
            print(done.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - what an uncaught error does in a fresh process: its traceback, exit 1
        import traceback

        traceback.print_exc()
    finally:
        atexit._run_exitfuncs()  # noqa: SLF001 - what interpreter exit runs first (MLflow ends its runs there)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(code)


def _reap(stages: dict[int, _Stage]) -> None:
    """Tell each finished stage's command how it ended."""
    for pid in list(stages):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            stage = stages.pop(pid)
            try:
                stage.conn.sendall(struct.pack("!i", os.waitstatus_to_exitcode(status)))
            except OSError:
                pass  # its command is gone
            stage.conn.close()
            if stage.exited is not None:
                os.close(stage.exited)


def _preload(name: str) -> None:
    import importlib
    import warnings

    with warnings.catch_warnings():  # (no fork inside: a stage keeps its own warning filters)
        warnings.simplefilter("ignore")
        try:
            importlib.import_module(name)
        except ImportError:  # not installed (an optional library): the stages that need it say so themselves
            pass


def _import_time(env: dict, prefixes: tuple[str, ...] = ()) -> dict:
    return {key: value for key, value in env.items() if key.startswith((*IMPORT_TIME, *prefixes))} | {
        "MLFLOW_LOGGING_LEVEL": env.get("MLFLOW_LOGGING_LEVEL", "WARNING")}


def _streams() -> list[int]:
    """This process's stdin, stdout and stderr, /dev/null for one that is closed."""
    fds = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            fds.append(fd)
        except OSError:
            fds.append(os.open(os.devnull, os.O_RDWR))
    return fds


def _received(conn: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def stop_with_parent() -> None:
    """In a child process, before it starts (`preexec_fn`): SIGTERM it when the process that started it dies,
    however it dies (a SIGKILL leaves no `finally` to run), so no orphan keeps a port, a socket or a database.
    Linux only; elsewhere the child outlives a killed parent."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


if __name__ == "__main__":
    serve(sys.argv[1], *(tuple(filter(None, arg.split(","))) for arg in sys.argv[2:4]))
