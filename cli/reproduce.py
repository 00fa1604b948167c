"""`mlops reproduce MODEL REF`: rebuild a registered version from its commit, params and data version, and compare."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path


def add_commands(commands: argparse._SubParsersAction) -> None:
    command = commands.add_parser("reproduce", help="re-run a registered version's stages and compare its metrics")
    command.add_argument("model", help="registered model name, e.g. digits-classifier")
    command.add_argument("ref", help="a version number or an alias (champion, challenger)")
    command.add_argument("--root", type=Path, default=Path.cwd(), help="project root (default: the current directory)")
    command.add_argument("--keep", type=Path, help="reproduce in this folder and keep it (default: a temporary one)")
    command.add_argument("--allow-dirty", action="store_true",
                         help="re-run the commit even if the run had uncommitted changes")
    command.set_defaults(run=run_reproduce)


def run_reproduce(args: argparse.Namespace) -> int:
    from tasks.common.errors import PipelineError
    from jobs.reproduce import reproduce

    workdir = args.keep or Path(tempfile.mkdtemp(prefix="reproduce-"))
    try:
        rows = reproduce(args.root.resolve(), args.model, args.ref, workdir.resolve(), args.allow_dirty)
    except PipelineError as err:
        print(f"reproduce: {err}", file=sys.stderr)
        return err.exit_code
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    width = max(len(r.metric) for r in rows)
    for r in rows:
        print(f"  {r.metric:<{width}}  original {r.original!r:<22} reproduced {r.reproduced!r:<22} "
              f"{'same' if r.equal else 'DIFFERENT'}")
    same = all(r.equal for r in rows)
    print(f"{args.model} {args.ref}: {'reproduced exactly' if same else 'metrics differ'} ({len(rows)} metrics compared)")
    return 0 if same else 1
