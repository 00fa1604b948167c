"""How fast `mlops` answers: `mlops --help`, each subcommand's `--help`, and argument errors, as a person types
them (a new process each time, the installed `.venv/bin/mlops`), median of several starts; goal: under 1 s.

    python -m benchmarks.cli_startup [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from benchmarks.record import save
from tests.support.processes import MLOPS

GOAL_S = 1.0
COMMANDS = ([], ["run"], ["score"], ["sweep"], ["schedule"], ["schedule", "status"], ["history"], ["serve"],
            ["drift"], ["reproduce"])
# Argument errors a person makes: each must be refused, with its message, as fast as --help answers.
ERRORS = (["score"], ["run", "--set", "train.epochs"], ["run", "--set", "train.nonsense=1"], ["run", "--label", "y"],
          ["sweep", "--trials", "-1"], ["nonsense"])


def _median_start(argv: list[str], repeats: int, refused: bool = False) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        done = subprocess.run([MLOPS, *argv] if refused else [MLOPS, *argv, "--help"], capture_output=True)
        times.append(time.perf_counter() - started)
        assert (done.returncode != 0) == refused, (argv, done.stderr[-500:])
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    _median_start([], 1)  # a first start warms the file cache, as any second command a person types would find it
    seconds = {" ".join(["mlops", *command, "--help"]): _median_start(command, args.repeats) for command in COMMANDS}
    seconds |= {" ".join(["mlops", *command]) + " (refused)": _median_start(command, args.repeats, refused=True)
                for command in ERRORS}
    rows = [f"| `{command}` | {s * 1000:.0f} ms | {'yes' if s < GOAL_S else 'NO'} |" for command, s in seconds.items()]
    markdown = "\n".join([
        f"Median wall time of {args.repeats} starts of a new process, `--help` of each command (the goal: under "
        f"{GOAL_S:g} s), and of argument errors (refused, non-zero exit). Imports are lazy: a command imports "
        "Prefect, MLflow or torch only when it runs.", "",
        "| command | median | under the goal |", "|---|---|---|", *rows])
    save("cli_startup", title="Command start-up (`mlops ... --help`, argument errors)",
         command=f"python -m benchmarks.cli_startup --repeats {args.repeats}", markdown=markdown,
         figures={"median_s": seconds, "goal_s": GOAL_S})
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
