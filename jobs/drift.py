"""Drift: are the inputs a service answers still like the data its model trained on? (`mlops drift --url URL`)

Reads the service's /metadata (the training inputs' statistics, stored in the Bento at package time, with
the data version they came from) and /recent_inputs (the last inputs it answered), and compares them with
tasks/shipped/skew.py's rule. `mlops drift` runs the same check as a Prefect flow that can start
retraining.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class ServiceUnreadable(Exception):
    """The service did not answer /metadata or /recent_inputs as a Bento of this project does."""


def check(url: str, max_shift: float, min_samples: int, api_key: str = "", operator_key: str = "") -> dict:
    """The drift report: {"drifted", "score", "worst", "statistics", "samples", "data_version", "violations", ...}.

    /recent_inputs shows what clients sent: the service opens it only to its operator key (X-Operator-Key)."""
    import httpx

    from tasks.shipped.skew import drift

    headers = {"X-API-Key": api_key} if api_key else {}
    if operator_key:
        headers["X-Operator-Key"] = operator_key
    try:
        with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=60) as http:
            about = http.get("/metadata").raise_for_status().json()
            recent = http.get("/recent_inputs").raise_for_status().json()
    except httpx.HTTPStatusError as err:  # its answer says why (e.g. 403: BENTO_OPERATOR_KEY not set here)
        raise ServiceUnreadable(f"{url}: {err.request.url.path} answered {err.response.status_code}: "
                                f"{err.response.text[:300]}") from err
    except (httpx.HTTPError, ValueError) as err:
        raise ServiceUnreadable(f"{url}: {err!r}") from err
    expected = about.get("expectations") or {}
    served = {"url": url, "model_version": about.get("model_version"), "bento_model": about.get("bento_model"),
              "violations": about.get("skew", {}).get("violations", {}), "refused": about.get("skew", {}).get("refused", {})}
    if not expected:
        raise ServiceUnreadable(f"{url}: its /metadata has no training expectations (a Bento built before drift "
                                "checks existed): package it again")
    if recent["count"] < min_samples:
        return {**served, "drifted": False, "samples": recent["count"], "data_version": expected.get("data_version"),
                "verdict": f"no verdict: {recent['count']} recent inputs, fewer than drift.min_samples {min_samples}"}
    report = drift(np.asarray(recent["inputs"], dtype=np.float64), recent["kind"], expected, max_shift)
    worst = report["statistics"][report["worst"]]
    verdict = (f"{'DRIFTED' if report['drifted'] else 'no drift'}: {report['worst']} moved {report['score']:.2f} "
               f"training std devs (served mean {worst['served_mean']:.4g} vs {worst['training_mean']:.4g}; "
               f"limit {max_shift}) over {report['samples']} recent inputs")
    return {**served, **report, "verdict": verdict}


def render(report: dict) -> str:
    lines = [f"{report['url']}: model v{report.get('model_version')}, trained on data version "
             f"{report.get('data_version')}", f"  {report['verdict']}"]
    for name, row in report.get("statistics", {}).items():
        lines.append(f"    {name:<12} served {row['served_mean']:>10.4g}  training {row['training_mean']:>10.4g}  "
                     f"shift {row['shift']:6.2f}")
    if report.get("violations") or report.get("refused"):
        lines.append(f"  inputs outside the training range, per check: {report.get('violations')}; "
                     f"refused: {report.get('refused')}")
    return "\n".join(lines)


def check_configured(url: str, root: Path | str) -> dict:
    """`check` with the project's `drift` params and the keys from BENTO_API_KEY and BENTO_OPERATOR_KEY (as the
    service reads them)."""
    from tasks.common.config import load_params

    cfg = load_params(Path(root).resolve() / "params.yaml").drift
    return check(url, cfg.max_shift, cfg.min_samples, os.environ.get("BENTO_API_KEY", ""),
                 os.environ.get("BENTO_OPERATOR_KEY", ""))
