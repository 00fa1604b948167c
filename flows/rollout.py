"""After a run: put the new champion's Bento in front of users, if a serving front is configured.

The front (`mlops serve`) does the switch itself: start, health-check, switch, drain, stop.
This step only decides whether to ask it: the run promoted a new champion, a front is configured
(`rollout.admin_url`), and the front is not already serving this run's Bento.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)
PENDING = ".serving/rollout.pending"  # a roll-out asked for, not yet answered: a kill leaves it, the next run ends it


def roll_out_champion(root: Path, admin_url: str, ready_timeout_s: float | None = None) -> dict:
    """What happened to the served Bento: {"action": "rolled out" | "kept" | "none", "reason": ..., ...}.

    Raises bento.front.supervisor.BackendFailed when the front cannot be reached or the new Bento did not become ready
    (the old one is then still serving).
    """
    from bento.front.admin import admin_token, request_rollout, serving_status
    from tasks.common.atomic import write_json
    from tasks.common.outputs import BentoBuild, Promotion

    promotion = Promotion.read(root / "artifacts/promote/promotion.json")
    bento = BentoBuild.read(root / "artifacts/package/bento.json").bento_tag
    if not admin_url:
        (root / PENDING).unlink(missing_ok=True)  # no front to finish it on any more
        return {"action": "none", "reason": "no serving front configured (rollout.admin_url is empty)"}
    if not promotion.promoted:
        return {"action": "kept", "reason": f"version {promotion.version} was not promoted"}
    token = admin_token(root / ".serving")  # the front's, when it runs from this project (else FRONT_ADMIN_TOKEN)
    if serving_status(admin_url, token)["bento"] == bento:
        (root / PENDING).unlink(missing_ok=True)
        return {"action": "kept", "reason": f"the front already serves {bento}", "bento": bento}
    # Said before asking: a run killed while the front switches leaves this, and the next `mlops run` then starts a
    # flow (instead of "everything up to date") whose roll-out step sees the front and finishes the job.
    write_json(root / PENDING, {"bento": bento, "version": promotion.version})
    record = request_rollout(admin_url, bento, token, ready_timeout_s)
    (root / PENDING).unlink(missing_ok=True)
    if record.get("already_serving"):  # the switch a killed run asked for had finished meanwhile
        return {"action": "kept", "reason": f"the front already serves {bento}", "bento": bento}
    return {"action": "rolled out", "reason": f"version {promotion.version} promoted to champion", **record}


def champion_bento(root: Path, params) -> str:
    """The newest Bento built for the registry's current `champion` version. On a machine whose BentoML store has
    none (a new server, another BENTOML_HOME, a cleaned store), one is built here from what the registry holds: the
    champion's shipped model (jobs/score/model.py imports it) inside this project's bento/ service."""
    import bentoml
    from bentoml.exceptions import NotFound

    from tasks.common import registry, tracking
    from tasks.common.errors import PromotionError

    tracking.use_store(root)
    name = params.evaluate.registered_model
    try:
        built = bentoml.bentos.list(params.package.service_name)
    except NotFound:  # none of that name in this store at all
        built = []
    try:
        return str(registry.newest_for_champion(name, built, "Bento").tag)
    except PromotionError:
        champion = registry.champion_version(name)
        if champion is None:
            raise
    from jobs.score.model import NoModel, imported
    from tasks.package.stage import build_around

    try:
        model = imported(name, champion, params.package.bento_model)
    except NoModel as err:
        raise PromotionError(str(err)) from err
    labels = dict(bentoml.models.get(model.tag).info.labels)
    tag = build_around(model.tag, labels, params.package, root / "bento")
    log.warning("champion %s v%s had no Bento on this machine: built %s from the registry's shipped model", name,
                champion, tag)
    return tag