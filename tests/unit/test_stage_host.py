"""The stage commands' warm host (tasks/common/stage_host.py): a command handed to it runs in a child forked from
the host, with the command's arguments, directory, environment and streams, and the command exits as the child
did; what it cannot run the same way it refuses, and the command then runs itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tasks.common.stage_host import HOST_ENV, PRELOAD, preload_for, started
from tests.support.processes import REPO

PROBE = textwrap.dedent("""
    import os, sys, time
    print(f"pid={os.getpid()} parent={os.getppid()} cwd={os.getcwd()} argv={sys.argv[1:]} "
          f"probe={os.environ.get('PROBE_VALUE')}", flush=True)
    print("to stderr", file=sys.stderr)
    if "sleep" in sys.argv:
        open("probe.pid", "w").write(str(os.getpid()))
        time.sleep(120)
    if "crash" in sys.argv:
        raise ValueError("the probe crashed")
    sys.exit(int(sys.argv[1]))
""")

# A stage command reduced to its first line: hand off to the host, else say so and exit 99.
COMMAND = (f"import sys; sys.path.insert(0, {str(REPO)!r}); from tasks.common.stage_host import hand_off; "
           "code = hand_off('probe'); print('ran here' if code is None else '', end=''); "
           "sys.exit(99 if code is None else code)")


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """A host (it imports the stages' libraries first: seconds), and a folder holding the probe module."""
    folder = tmp_path_factory.mktemp("probe")
    (folder / "probe.py").write_text(PROBE)
    with started(REPO) as host_env:
        address = Path(host_env[HOST_ENV])
        env = {**os.environ, **host_env}  # the host's own (the per-test stores differ: it would refuse them)
        deadline = time.monotonic() + 120
        while not address.exists():
            assert time.monotonic() < deadline, "the stage host did not listen within 120 s"
            time.sleep(0.2)
        yield folder, env


def _command(folder: Path, env: dict, *args: str, **extra_env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", COMMAND, *args], cwd=folder, env={**env, **extra_env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_command_runs_in_a_child_of_the_host_with_its_arguments_directory_environment_and_streams(host):
    folder, env = host
    command = _command(folder, env, "7", "--flag", PROBE_VALUE="from the command")
    out, err = command.communicate(timeout=60)
    assert command.returncode == 7, out + err
    assert "ran here" not in out
    fields = dict(part.split("=", 1) for part in out.split("argv=")[0].split())
    assert int(fields["pid"]) != command.pid and int(fields["parent"]) != command.pid  # forked by the host
    assert fields["cwd"] == str(folder)
    assert "argv=['7', '--flag'] probe=from the command" in out
    assert err.strip() == "to stderr"


def test_an_uncaught_error_prints_its_traceback_and_exits_1(host):
    folder, env = host
    command = _command(folder, env, "0", "crash")
    out, err = command.communicate(timeout=60)
    assert command.returncode == 1
    assert "Traceback" in err and "ValueError: the probe crashed" in err


def test_a_command_whose_import_time_settings_differ_from_the_hosts_runs_itself(host):
    """OpenMP reads OMP_NUM_THREADS when torch is imported: the host's import would not honour another value."""
    folder, env = host
    command = _command(folder, env, "0", OMP_NUM_THREADS=str(int(os.environ.get("OMP_NUM_THREADS", "1")) + 7))
    out, _ = command.communicate(timeout=60)
    assert (command.returncode, out) == (99, "ran here")


def test_with_no_host_listening_the_command_runs_itself(tmp_path):
    (tmp_path / "probe.py").write_text(PROBE)
    command = _command(tmp_path, {**os.environ, HOST_ENV: str(tmp_path / "nobody.sock")}, "0")
    out, _ = command.communicate(timeout=60)
    assert (command.returncode, out) == (99, "ran here")


def test_a_killed_command_takes_its_stage_with_it(host):
    """DVC killed with its command (a stage timeout, Ctrl-C): the stage must not run on unseen in the host."""
    folder, env = host
    (folder / "probe.pid").unlink(missing_ok=True)
    command = _command(folder, env, "0", "sleep")
    deadline = time.monotonic() + 60
    while not (folder / "probe.pid").is_file() or not (folder / "probe.pid").read_text():
        assert time.monotonic() < deadline and command.poll() is None, command.communicate()
        time.sleep(0.1)
    stage = int((folder / "probe.pid").read_text())
    os.kill(command.pid, signal.SIGKILL)
    command.wait()
    deadline = time.monotonic() + 10
    while _alive(stage):
        assert time.monotonic() < deadline, f"the stage (pid {stage}) outlived its killed command"
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/stat").read_text().split(") ")[1].split()[0]
    except FileNotFoundError:
        return False
    return status != "Z"


def test_a_host_told_its_runs_stages_imports_what_they_need_and_not_the_rest(tmp_path):
    """A run that is to execute `promote` alone: its host imports what promote needs (BentoML, MLflow), not Great
    Expectations or torch (2.5 and 1.3 s of CPU that run would not use); a stage it does not know: everything."""
    assert {"great_expectations", "torch", "bentoml"} <= set(PRELOAD) and preload_for(["promote", "mine"]) == PRELOAD
    both = preload_for(["train", "evaluate"])
    assert both.index("torch") < both.index("sklearn.metrics") and len(both) == len(set(both))
    (tmp_path / "probe.py").write_text(
        "import sys\nprint(','.join(m for m in ('bentoml', 'great_expectations', 'torch') if m in sys.modules))\n")
    with started(REPO, stages=["promote"]) as host_env:
        warm = Path(host_env[HOST_ENV] + ".warm")
        deadline = time.monotonic() + 120
        while not warm.exists():
            assert time.monotonic() < deadline, "the stage host did not finish its imports within 120 s"
            time.sleep(0.2)
        done = subprocess.run([sys.executable, "-c", COMMAND], cwd=tmp_path, env={**os.environ, **host_env},
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "bentoml", (done.stdout, done.stderr[-2000:])


def test_a_stage_forked_from_a_warm_host_finds_torchs_compiler_stack_imported(host):
    """train, evaluate and compress call what imports torch's compiler stack on first use (deterministic
    algorithms, MLflow's model export, the optimizer's constructor: 1.6-1.9 s a stage when the stage imported it
    itself, py-spy over a cold run); in a child of a warm host those calls import none of it."""
    folder, env = host
    (folder / "compiler_probe.py").write_text(textwrap.dedent("""
        import sys, torch
        before = set(sys.modules)
        torch.use_deterministic_algorithms(True)
        torch.optim.AdamW(torch.nn.Linear(2, 2).parameters())
        torch.export.export(torch.nn.Linear(2, 2), (torch.zeros(1, 2),))
        print(",".join(sorted({"torch._dynamo", "torch._inductor", "torch.export._trace"} - before)))
    """))
    _wait_warm(env)
    command = COMMAND.replace("hand_off('probe')", "hand_off('compiler_probe')")
    done = subprocess.run([sys.executable, "-c", command], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "", (done.stdout, done.stderr[-2000:])


def test_a_stages_garbage_collections_leave_the_hosts_objects_alone(host):
    """A collection in a child of the host walks the child's own objects only: the host's (its imports) are frozen
    before it forks. Otherwise a full one writes to every object of the host, copying the host's memory page by
    page into the child: 0.6 s of a 1.8 s `mlops score` run by the warm host (cProfile in the command)."""
    folder, env = host
    (folder / "gc_probe.py").write_text("import gc; print(gc.get_freeze_count(), len(gc.get_objects()))")
    _wait_warm(env)
    command = COMMAND.replace("hand_off('probe')", "hand_off('gc_probe')")
    done = subprocess.run([sys.executable, "-c", command], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    frozen, walked = (int(n) for n in done.stdout.split())
    assert frozen > 10 * walked, (frozen, walked)


def _wait_warm(env: dict) -> None:
    warm = Path(env[HOST_ENV] + ".warm")
    deadline = time.monotonic() + 120
    while not warm.exists():
        assert time.monotonic() < deadline, "the stage host did not finish its imports within 120 s"
        time.sleep(0.2)
