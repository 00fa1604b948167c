"""`mlops` / `python -m cli`: one program, a subcommand per job (see cli/__init__.py)."""

from __future__ import annotations

import argparse
import sys

from cli import drift, registry, reproduce, serving


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlops", description="Operate the pipeline's registry, service and data.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (registry, serving, drift, reproduce):
        module.add_commands(commands)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
