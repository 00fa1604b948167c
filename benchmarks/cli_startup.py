"""How fast `mlops` answers: `mlops --help` and each subcommand's `--help`, as a person types them (a new
process each time, the installed `.venv/bin/mlops`), median of several starts; goal: under 1 s.

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


def _median_start(argv: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([MLOPS, *argv, "--help"], check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    _median_start([], 1)  # a first start warms the file cache, as any second command a person types would find it
    seconds = {" ".join(["mlops", *command, "--help"]): _median_start(command, args.repeats) for command in COMMANDS}
    rows = [f"| `{command}` | {s * 1000:.0f} ms | {'yes' if s < GOAL_S else 'NO'} |" for command, s in seconds.items()]
    markdown = "\n".join([
        f"Median wall time of {args.repeats} starts of a new process, `--help` of each command (the goal: under "
        f"{GOAL_S:g} s). Imports are lazy: a command imports Prefect, MLflow or torch only when it runs.", "",
        "| command | median | under the goal |", "|---|---|---|", *rows])
    save("cli_startup", title="Command start-up (`mlops ... --help`)",
         command=f"python -m benchmarks.cli_startup --repeats {args.repeats}", markdown=markdown,
         figures={"median_s": seconds, "goal_s": GOAL_S})
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
