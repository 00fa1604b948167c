"""`mlops history` and `mlops rollback`: the champion's record, and undoing a move."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_commands(commands: argparse._SubParsersAction) -> None:
    history = commands.add_parser("history", help="every move of the champion alias, oldest first")
    history.set_defaults(run=show_history)
    rollback = commands.add_parser("rollback", help="move champion back to the previous (or a given) version")
    rollback.add_argument("--to", help="this version instead of the previous champion")
    rollback.add_argument("--reason", default="", help="why, recorded with the move")
    rollback.set_defaults(run=roll_back)
    for command in (history, rollback):
        command.add_argument("--root", type=Path, default=Path.cwd(), help="project root (params.yaml, mlflow.db)")


def _model(root: Path) -> str:
    from tasks.common import tracking
    from tasks.common.config import load_params

    tracking.use_store(root)
    return load_params(root / "params.yaml").evaluate.registered_model


def roll_back(args: argparse.Namespace) -> int:
    import mlflow

    from tasks.common.registry import rollback

    name = _model(args.root)
    try:
        move = rollback(name, args.to, args.reason)
    except (LookupError, mlflow.exceptions.MlflowException) as err:
        print(f"rollback refused: {err}", file=sys.stderr)
        return 1
    print(f"{name}: champion v{move.from_version} -> v{move.to_version} ({move.reason}); a serving front "
          "follows with: mlops rollout")
    return 0


def show_history(args: argparse.Namespace) -> int:
    from tasks.common.registry import champion_version, history

    name = _model(args.root)
    moves = history(name)
    print(f"{name}: champion v{champion_version(name) or '-'}; {len(moves)} recorded move(s)")
    for m in moves:
        print(f"{m.seq:>4}  {m.time}  {m.action:<8}  v{m.from_version or '-'} -> v{m.to_version}  {m.reason}")
    return 0
