"""`mlops serve | rollout | status`: the serving front (bento/front/), one public port in front of a Bento that is
replaced without downtime."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def add_commands(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="serve a Bento behind the front door")
    serve.add_argument("--bento", help="Bento tag to start with (default: the Bento of the registry's champion)")
    serve.add_argument("--host", default="127.0.0.1", help="public address (default 127.0.0.1; 0.0.0.0 for all)")
    serve.add_argument("--port", type=int, default=3000)
    serve.add_argument("--admin-port", type=int, default=3001, help="admin endpoints, on loopback (default 3001)")
    serve.add_argument("--root", type=Path, default=Path.cwd(), help="project root: params.yaml, logs in .serving/")
    serve.set_defaults(run=run_serve)
    rollout = commands.add_parser("rollout", help="replace the running Bento with another, without downtime")
    rollout.add_argument("bento", nargs="?", help="Bento tag, e.g. digits_classifier:abc123 (default: the Bento of "
                         "the registry's champion, e.g. after `mlops rollback`)")
    rollout.add_argument("--root", type=Path, default=Path.cwd(), help="project root: the champion's Bento, and "
                         "the front's admin token in .serving/ (or FRONT_ADMIN_TOKEN)")
    rollout.add_argument("--admin", default="http://127.0.0.1:3001")
    rollout.add_argument("--ready-timeout", type=float, help="seconds the new Bento gets to become ready "
                         "(default: the front's, rollout.ready_timeout_seconds)")
    rollout.set_defaults(run=run_rollout)
    status = commands.add_parser("status", help="what the front serves, since when, and the roll-outs so far")
    status.add_argument("--admin", default="http://127.0.0.1:3001")
    status.add_argument("--root", type=Path, default=Path.cwd(), help="project root: the front's admin token in "
                        ".serving/ (or FRONT_ADMIN_TOKEN)")
    status.set_defaults(run=run_status)


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)


def run_serve(args: argparse.Namespace) -> int:
    import asyncio

    from bento.front.admin import serve
    from bento.front.supervisor import BackendFailed
    from flows.rollout import champion_bento
    from tasks.common.config import load_params
    from tasks.common.errors import PipelineError

    _logging()
    root = args.root.resolve()
    try:
        params = load_params(root / "params.yaml")
        tag = args.bento or champion_bento(root, params)
        asyncio.run(serve(tag, args.host, args.port, args.admin_port, root / ".serving",
                          params.rollout.ready_timeout_seconds, params.rollout.drain_timeout_seconds))
    except (PipelineError, BackendFailed) as err:
        print(f"front: {err}", file=sys.stderr)
        return 1
    return 0


def run_rollout(args: argparse.Namespace) -> int:
    from bento.front.admin import admin_token, request_rollout
    from bento.front.supervisor import BackendFailed
    from flows.rollout import champion_bento
    from tasks.common.config import load_params
    from tasks.common.errors import PipelineError

    _logging()
    try:
        tag = args.bento or champion_bento(args.root.resolve(), load_params(args.root / "params.yaml"))
        token = admin_token(args.root.resolve() / ".serving")
        print(json.dumps(request_rollout(args.admin, tag, token, args.ready_timeout), indent=2))
    except (BackendFailed, PipelineError) as err:
        print(f"roll-out failed: {err}", file=sys.stderr)
        return 1
    return 0


def run_status(args: argparse.Namespace) -> int:
    from bento.front.admin import admin_token, serving_status
    from bento.front.supervisor import BackendFailed

    try:
        print(json.dumps(serving_status(args.admin, admin_token(args.root.resolve() / ".serving")), indent=2))
    except BackendFailed as err:
        print(f"front: {err}", file=sys.stderr)
        return 1
    return 0
