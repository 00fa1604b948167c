"""The project's Prefect server kept between the commands typed by hand: `python -m flows.kept_server ROOT PORT
MINUTES`, started by the first `mlops run`, `score` or `sweep` that finds none running (flows/prefect_server.py
`for_command`).

Starting a Prefect server costs 3 to 4 s of every command on 2 cores (its imports); the next command within
MINUTES finds this one running instead, with the UI at the address Prefect's run links print, and with a warm host
for the commands (`command_host`: Prefect, MLflow, DVC and the jobs imported once), started once the command that
started the server is done, so that its imports do not compete with that command's. A process using the server
holds a shared lock on `.prefect/users.lock` while it lives (flows/prefect_server.py `_use`: the kernel releases it
however the process ends); once nobody has held it for MINUTES the keeper takes it exclusively and stops the server,
so that no command starts using a server that is stopping (one that comes meanwhile waits, then starts another).
One keeper a project (`.prefect/keeper.lock`, which holds its pid while it serves: `kill $(cat
.prefect/keeper.lock)` stops it now). A SIGKILL of the keeper takes its server and host with it (they die with
their parent).
"""

from __future__ import annotations

import fcntl
import os
import signal
import sys
import time
from pathlib import Path

from flows.prefect_server import (STATE_DIR, USERS_LOCK, port_taken, project_server, running_server,
                                  start_command_host)

START_TIMEOUT_S = 120  # a fresh database without the install's copy is migrated first: 10-20 s on 2 cores


def keep(root: Path, port: int, minutes: float) -> int:
    """Run the project's server until no process has used it for `minutes`; 0 at once when another keeper runs
    it (or `mlops schedule` does)."""
    home = root / STATE_DIR
    home.mkdir(exist_ok=True)
    keeper = _keeper_lock(home)
    if keeper is None:
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill`: stop the server and its host on the way out
    try:
        return _serve(root, port, minutes)
    finally:
        os.ftruncate(keeper, 0)  # no pid left in it to kill by mistake


def _serve(root: Path, port: int, minutes: float) -> int:
    """The keeper's work: the server on `port` (another when that one was taken since), its warm host once the
    command that started it is done, both stopped once no process has used the server for `minutes`."""
    users = os.open(root / STATE_DIR / USERS_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    if port_taken(port):  # since the command chose it (the command reads the address from the server's record)
        from bento.front.supervisor import free_port

        port = free_port()
    with project_server(root, port, timeout_s=START_TIMEOUT_S, warm_host=False) as server:
        if not server.started_here:  # `mlops schedule` started one meanwhile
            return 0
        try:
            _log(f"serving {server.ui_url} until unused for {minutes:g} min")
            idle_s = minutes * 60
            check_s = min(5.0, max(0.2, idle_s / 10))
            while not _unused(users):  # the command that started it, and any other meanwhile
                time.sleep(check_s)
            with start_command_host(root):
                _wait_idle(users, idle_s, check_s)  # returns holding the lock: nobody starts using it as it stops
                _log(f"unused for {minutes:g} min")
        finally:
            _log("stopping the server")
    return 0


def _log(line: str) -> None:
    print(f"{time.strftime('%F %T')} {line}", flush=True)  # to .prefect/keeper.log


def _keeper_lock(home: Path) -> int | None:
    """The project's keeper lock, with this process's pid in it; None when a keeper serves already (this one is not
    needed). Waits while another keeper is still stopping its server (the lock held, no server answering)."""
    fd = os.open(home / "keeper.lock", os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if running_server(home.parent) or time.monotonic() > deadline:
                os.close(fd)
                return None
            time.sleep(0.2)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _unused(users: int) -> bool:
    """Whether no process holds the server's users' lock now."""
    try:
        fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    fcntl.flock(users, fcntl.LOCK_UN)
    return True


def _wait_idle(users: int, idle_s: float, check_s: float) -> None:
    """Return once no process has used the server for `idle_s`, holding its users' lock exclusively. The lock
    file's mtime is the last use's start (flows/prefect_server.py `_use`): a command that came and went between
    two checks counts."""
    idle_since = time.time()
    while True:
        time.sleep(check_s)
        last_start = os.fstat(users).st_mtime
        try:
            fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # in use
            idle_since = time.time()
            continue
        if time.time() - max(idle_since, last_start) >= idle_s:
            return
        fcntl.flock(users, fcntl.LOCK_UN)


if __name__ == "__main__":
    sys.exit(keep(Path(sys.argv[1]).resolve(), int(sys.argv[2]), float(sys.argv[3])))
