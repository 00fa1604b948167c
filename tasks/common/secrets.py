"""Credentials never leave in what the pipeline records: a URL's password is masked before a value goes into MLflow
params or tags, a checkpoint or a Bento's metadata (all of which travel: a shared tracking server, a registry, a
container image). The connection itself keeps the real value; better still, keep it out of params.yaml (PostgreSQL
reads PGPASSWORD or ~/.pgpass)."""

from __future__ import annotations

import re
from typing import Any

MASK = "***"
# scheme://user:password@host, and ?password=... style query parameters
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*):(?P<secret>[^@\s/]*)@")
_QUERY = re.compile(r"(?i)(?P<head>[?&](?:password|passwd|pwd|secret|token|access_key|secret_key)=)(?P<secret>[^&\s]*)")


def redact(text: str) -> str:
    """`text` with every URL password (and password-like query parameter) replaced by ***."""
    text = _USERINFO.sub(lambda m: f"{m.group('head')}:{MASK}@", text)
    return _QUERY.sub(lambda m: f"{m.group('head')}{MASK}", text)


def redacted(tree: Any) -> Any:
    """A copy of a params tree (dicts, lists, values) with every string redacted."""
    if isinstance(tree, dict):
        return {key: redacted(value) for key, value in tree.items()}
    if isinstance(tree, list):
        return [redacted(value) for value in tree]
    return redact(tree) if isinstance(tree, str) else tree
