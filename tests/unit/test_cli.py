"""`mlops`, the one command: every subcommand answers --help, and every `mlops` line of the README parses as
written (argument parsing only: nothing runs)."""

from __future__ import annotations

import re
import shlex

import pytest

from cli.__main__ import COMMANDS, main, parser
from tests.support.structure import REPO

SUBCOMMANDS = sorted(parser()._subparsers._group_actions[0].choices)  # noqa: SLF001 - argparse keeps them there


def test_the_one_command_has_every_job():
    assert {"run", "score", "sweep", "schedule", "history", "rollback", "serve", "rollout", "status", "drift",
            "reproduce"} <= set(SUBCOMMANDS)
    assert len(COMMANDS) == len({module.__name__ for module in COMMANDS})


@pytest.mark.parametrize("argv", [[], *([name] for name in SUBCOMMANDS), ["schedule", "status"]],
                         ids=lambda argv: " ".join(argv) or "mlops")
def test_every_subcommand_answers_help(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: mlops {' '.join(argv)}".rstrip()) and "--help" in out


def _readme_commands() -> list[str]:
    """Each `mlops ...` line in the README's shell blocks, its comment cut."""
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    lines = [line.removeprefix(".venv/bin/") for block in blocks for line in block.splitlines()]
    return [shlex.join(shlex.split(line, comments=True)) for line in lines if re.match(r"mlops\b", line)]


def test_the_readme_shows_the_commands():
    commands = {shlex.split(line)[1] for line in _readme_commands()}
    assert {"score", "sweep", "schedule", "drift", "rollback", "reproduce"} <= commands, commands


@pytest.mark.parametrize("line", _readme_commands())
def test_every_readme_command_parses_as_written(line):
    args = parser().parse_args(shlex.split(line)[1:])
    assert callable(args.run)


def test_an_error_is_one_line_with_an_exit_code_and_debug_shows_the_traceback(tmp_path, capsys):
    """A bad --set: the ConfigError's line and its exit code (2); with --debug, the exception itself."""
    from tasks.common.errors import ConfigError

    assert main(["run", "--root", str(tmp_path), "--set", "no-equals-sign"]) == ConfigError.exit_code
    err = capsys.readouterr().err.strip()
    assert err.startswith("mlops run: ConfigError: --set 'no-equals-sign'") and "\n" not in err
    with pytest.raises(ConfigError):
        main(["--debug", "run", "--root", str(tmp_path), "--set", "no-equals-sign"])


@pytest.mark.parametrize("override, said", [("train.nonsense=1", "train.nonsense: Extra inputs are not permitted"),
                                            ("train.epochs=abc", "train.epochs: Input should be a valid integer")])
def test_a_bad_override_is_refused_before_anything_starts(tmp_path, override, said, capsys):
    """An unknown or ill-typed `--set` key is an argument error: one line, exit 2, no flow run, params untouched."""
    (tmp_path / "params.yaml").write_bytes((REPO / "params.yaml").read_bytes())
    assert main(["run", "--root", str(tmp_path), "--set", override]) == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "params.yaml").read_bytes() == (REPO / "params.yaml").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # no lock, no journal, no server state
