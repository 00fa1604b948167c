"""What a pipeline run reports: the summary printed at the end and the Prefect markdown artifact."""

from __future__ import annotations

import json
from pathlib import Path

from flows.dag import StageRun, locked_stages
from tasks.common.outputs import BentoBuild, CompressChoice, GateResult, Promotion


def summarize(root: Path, runs: list[StageRun], served: dict | None = None) -> dict:
    """The figures a user wants after a run, read from the stage outputs."""
    artifacts = root / "artifacts"
    read = lambda rel: json.loads((artifacts / rel).read_text())  # noqa: E731
    variants = read("compress/variants.json")
    choice = CompressChoice.read(artifacts / "compress/choice.json")
    chosen = choice.variant
    return {
        "data": {"kind": choice.kind, "classes": choice.classes, "served_shape": choice.served_shape,
                 "pixel_max": choice.pixel_max, "contract": read("validate/report.json").get("contract", {})},
        "executed": [r.stage for r in runs if r.executed],
        "skipped": [r.stage for r in runs if not r.executed],
        "test_accuracy": read("evaluate/metrics.json")["accuracy"],
        "leaderboard": read("evaluate/leaderboard.json"),
        "gate": GateResult.read(artifacts / "evaluate/gate.json").model_dump(),
        "promotion": Promotion.read(artifacts / "promote/promotion.json").model_dump(),
        "compressed": {"variant": chosen, "fp32": variants.get("fp32-torch", variants[chosen]),
                       "chosen": variants[chosen]},
        "family": _family(read("train/metrics.json")),
        "bento": BentoBuild.read(artifacts / "package/bento.json").model_dump(),
        "served": served or {"action": "none", "reason": "no roll-out step ran"},
    }


def render(summary: dict) -> str:
    fp32, chosen = summary["compressed"]["fp32"], summary["compressed"]["chosen"]
    promotion = summary["promotion"]
    return "\n".join([
        "",
        "Pipeline finished",
        f"  stages run:      {', '.join(summary['executed']) or 'none (everything up to date)'}",
        *([f"  from:            {summary['origin']}"] if summary.get("origin") else []),
        f"  data:            {_contract(summary['data'].get('contract', {}))}",
        *([f"  model family:    {summary['family']}"] if summary.get("family") else []),
        f"  test accuracy:   {summary['test_accuracy']:.4f}",
        f"  vs baselines:    {_board(summary['leaderboard'])}",
        f"  model version:   {promotion['version']} ({'champion' if promotion['promoted'] else 'challenger'}: {promotion['reason']})",
        f"  compressed:      {_compressed(summary['compressed']['variant'], fp32, chosen)}",
        f"  bento:           {summary['bento']['bento_tag']}",
        f"  serving front:   {_served(summary['served'])}",
        "",
        "Next:",
        "  MLflow UI:   make ui            (mlflow ui --backend-store-uri sqlite:///mlflow.db, then http://127.0.0.1:5000)",
        f"  serve:       make serve  (the champion's Bento on port 3000), or: bentoml serve {summary['bento']['bento_tag']} --host 127.0.0.1",
        f"  predict:     {predict_hint(summary['data'])} (README: Serving)",
    ])


def _compressed(variant: str, fp32: dict, chosen: dict) -> str:
    if fp32 is chosen or fp32 == chosen:  # a tree ensemble: no fp32 network to compare with
        return (f"{variant}: {chosen['size_bytes'] / 1024:.0f} KB, shipped as trained; latency b1 "
                f"{chosen['latency_b1_ms']:.3f} ms, b64 {chosen['latency_b64_ms']:.3f} ms; "
                f"accuracy {chosen['accuracy']:.4f}")
    return (f"{variant}: {chosen['size_bytes'] / 1024:.0f} KB vs {fp32['size_bytes'] / 1024:.0f} KB fp32; "
            f"latency b1 {chosen['latency_b1_ms']:.3f} ms vs {fp32['latency_b1_ms']:.3f} ms, "
            f"b64 {chosen['latency_b64_ms']:.3f} ms vs {fp32['latency_b64_ms']:.3f} ms; "
            f"accuracy {chosen['accuracy']:.4f}")


def _family(train_metrics: dict) -> str:
    """Which model family was shipped and by how much it won on the validation split; empty when one was trained."""
    if len(train_metrics.get("families", {})) < 2:
        return ""
    return f"{train_metrics['family']} won ({train_metrics['family_reason']})"


def predict_hint(data: dict) -> str:
    """How to ask the trained model, in its own terms: endpoint, input shape and range, the classes it answers."""
    classes = data["classes"]
    named = ", ".join(classes[:8]) + (f", … ({len(classes)} classes)" if len(classes) > 8 else "")
    if data["kind"] == "table":
        columns = list(data.get("contract", {}).get("columns", {}))
        if list(data.get("contract", {}).get("columns", {}).values()) == ["text"]:
            return f"POST http://127.0.0.1:3000/predict_text with {{\"texts\": [\"…\"]}} → label in [{named}]"
        shown = ", ".join(f'"{c}": …' for c in columns[:4]) + (", …" if len(columns) > 4 else "")
        return f"POST http://127.0.0.1:3000/predict_rows with {{\"rows\": [{{{shown}}}]}} → label in [{named}]"
    shape = "×".join(map(str, data["served_shape"]))
    return (f"POST http://127.0.0.1:3000/predict with {{\"images\": N×{shape} values in 0..{data['pixel_max']:g}}}, or a "
            f"PNG/JPEG to /predict_image → label in [{named}]")


def markdown(root: Path, summary: dict, overrides: dict | None) -> str:
    """The run's report for the Prefect UI: data version, validation, metrics against the champion, the
    promotion decision, the compression table and the Bento tag."""
    artifacts = root / "artifacts"
    read = lambda rel: json.loads((artifacts / rel).read_text())  # noqa: E731
    validation = read("validate/report.json")
    promotion, gate = summary["promotion"], summary["gate"]
    metrics = read("evaluate/metrics.json")
    variants = read("compress/variants.json")
    chosen = summary["compressed"]["variant"]
    versus = ("no champion before this run" if gate.get("champion_accuracy") is None else
              f"champion v{gate['previous_champion']}: {gate.get('champion_score') or gate['champion_accuracy']:.4f} "
              f"{gate.get('metric', 'accuracy').replace('_', ' ')} on the same test split "
              f"({gate['improvement']:+.4f}; {gate['test']} p = {gate['p_value']:.4g}, one-sided lower bound on the "
              f"gain {gate['lower_bound']:+.4f})")
    lines = [
        "# Pipeline run",
        "",
        f"**Stages run:** {', '.join(summary['executed']) or 'none (everything up to date)'}  ",
        f"**Skipped (up to date):** {', '.join(summary['skipped']) or 'none'}  ",
        f"**Overrides:** {json.dumps(overrides) if overrides else 'none'}" + ("  " if summary.get("origin") else ""),
        *([f"**From:** {summary['origin']}"] if summary.get("origin") else []),
        "",
        "## Data",
        f"- version (DVC hash of `data/raw`): `{_locked_md5(root, 'data/raw')}`",
        f"- contract: {_contract(summary['data'].get('contract', {}))}",
        f"- validation: {'passed' if validation['success'] else 'FAILED'} "
        f"({len(validation['failures'])} failed expectations; Data Docs on MLflow run `{validation.get('mlflow_run_id', '-')}`)",
        "",
        "## Model",
        *([f"- family: {summary['family']}"] if summary.get("family") else []),
        f"- test accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['f1_macro']:.4f}, "
        f"calibration error {metrics.get('expected_calibration_error', float('nan')):.4f}",
        f"- against the champion: {versus}",
        f"- test split: `{gate.get('test_split.md5', '?')}` (DVC hash of `data/prepared`: `{gate.get('test_split.dvc_md5', '?')}`)",
        f"- decision: **{'champion' if promotion['promoted'] else 'not promoted'}**, version "
        f"{promotion['version']}: {promotion['reason']}",
        "",
        "## Leaderboard (same train and test split)",
        "",
        "| model | test accuracy | macro F1 |",
        "|---|---|---|",
        *(f"| {name} | {row['accuracy']:.4f} | {row['f1_macro']:.4f} |" for name, row in _ranked(summary["leaderboard"])),
        "",
        "## Compression",
        "",
        "| variant | size (KB) | latency b1 (ms) | latency b64 (ms) | accuracy | |",
        "|---|---|---|---|---|---|",
        *(f"| {name} | {row['size_bytes'] / 1024:.0f} | {row['latency_b1_ms']:.3f} | {row['latency_b64_ms']:.3f} | "
          f"{row['accuracy']:.4f} | {'shipped' if name == chosen else ''} |" for name, row in variants.items()),
        "",
        f"## Bento\n`{summary['bento']['bento_tag']}`",
        "",
        f"## Serving\n{_served(summary['served'])}",
    ]
    return "\n".join(lines)


def _board(board: dict) -> str:
    """`network 0.9861, logistic_regression 0.9639, majority 0.1000`: best first."""
    return ", ".join(f"{name} {row['accuracy']:.4f}" for name, row in _ranked(board))


def _ranked(board: dict) -> list[tuple[str, dict]]:
    return sorted(board.items(), key=lambda item: -item[1]["accuracy"])


def _contract(contract: dict) -> str:
    if not contract:
        return "none"
    classes = contract.get("classes", [])
    shape = (f"{'×'.join(map(str, contract['image_shape']))}×{contract['channels']} images" if contract.get("kind") == "images"
             else f"a table of {len(contract.get('columns', {}))} columns")
    return (f"{contract.get('problem')} over {len(classes)} classes ({', '.join(classes[:12])}"
            f"{', …' if len(classes) > 12 else ''}); {shape}")


def _served(served: dict) -> str:
    if served["action"] != "rolled out":
        return f"{served['action']}: {served['reason']}"
    return (f"rolled out {served['to']} (was {served['from']}): ready in {served['ready_seconds']:.1f} s, "
            f"{'old requests drained' if served['drained'] else 'drain timed out'}, old service stopped")


def failure_markdown(stage: str, error: BaseException, runs: list[StageRun]) -> str:
    return "\n".join([
        "# Pipeline run failed", "",
        f"**Stage:** {stage}  ",
        f"**Stages finished before it:** {', '.join(r.stage for r in runs) or 'none'}", "",
        "```", str(error)[-3000:], "```",
    ])


def _locked_md5(root: Path, path: str) -> str:
    outs = [out for stage in locked_stages(root).values() for out in stage.get("outs", [])]
    found = [out["md5"] for out in outs if out.get("path") == path and "md5" in out]
    return found[0] if found else "unknown"
