"""After a run: put the new champion's Bento in front of users, if a serving front is configured.

The front (`python -m tasks.front serve`) does the switch itself: start, health-check, switch, drain, stop.
This step only decides whether to ask it: the run promoted a new champion, a front is configured
(`rollout.admin_url`), and the front is not already serving this run's Bento.
"""

from __future__ import annotations

import json
from pathlib import Path


def roll_out_champion(root: Path, admin_url: str, ready_timeout_s: float | None = None) -> dict:
    """What happened to the served Bento: {"action": "rolled out" | "kept" | "none", "reason": ..., ...}.

    Raises tasks.front.BackendFailed when the front cannot be reached or the new Bento did not become ready
    (the old one is then still serving).
    """
    from tasks.front import request_rollout, serving_status

    promotion = json.loads((root / "artifacts/promote/promotion.json").read_text())
    bento = json.loads((root / "artifacts/package/bento.json").read_text())["bento_tag"]
    if not admin_url:
        return {"action": "none", "reason": "no serving front configured (rollout.admin_url is empty)"}
    if not promotion["promoted"]:
        return {"action": "kept", "reason": f"version {promotion['version']} was not promoted"}
    if serving_status(admin_url)["bento"] == bento:
        return {"action": "kept", "reason": f"the front already serves {bento}", "bento": bento}
    record = request_rollout(admin_url, bento, ready_timeout_s)
    return {"action": "rolled out", "reason": f"version {promotion['version']} promoted to champion", **record}

