"""After a run: put the new champion's Bento in front of users, if a serving front is configured.

The front (`mlops serve`) does the switch itself: start, health-check, switch, drain, stop.
This step only decides whether to ask it: the run promoted a new champion, a front is configured
(`rollout.admin_url`), and the front is not already serving this run's Bento.
"""

from __future__ import annotations

from pathlib import Path


def roll_out_champion(root: Path, admin_url: str, ready_timeout_s: float | None = None) -> dict:
    """What happened to the served Bento: {"action": "rolled out" | "kept" | "none", "reason": ..., ...}.

    Raises bento.front.supervisor.BackendFailed when the front cannot be reached or the new Bento did not become ready
    (the old one is then still serving).
    """
    from bento.front.admin import admin_token, request_rollout, serving_status
    from tasks.common.outputs import BentoBuild, Promotion

    promotion = Promotion.read(root / "artifacts/promote/promotion.json")
    bento = BentoBuild.read(root / "artifacts/package/bento.json").bento_tag
    if not admin_url:
        return {"action": "none", "reason": "no serving front configured (rollout.admin_url is empty)"}
    if not promotion.promoted:
        return {"action": "kept", "reason": f"version {promotion.version} was not promoted"}
    token = admin_token(root / ".serving")  # the front's, when it runs from this project (else FRONT_ADMIN_TOKEN)
    if serving_status(admin_url, token)["bento"] == bento:
        return {"action": "kept", "reason": f"the front already serves {bento}", "bento": bento}
    record = request_rollout(admin_url, bento, token, ready_timeout_s)
    return {"action": "rolled out", "reason": f"version {promotion.version} promoted to champion", **record}


def champion_bento(root: Path, params) -> str:
    """The newest Bento built for the registry's current `champion` version."""
    import bentoml

    from tasks.common import registry, tracking

    tracking.use_store(root)
    return str(registry.newest_for_champion(params.evaluate.registered_model,
                                            bentoml.bentos.list(params.package.service_name), "Bento").tag)