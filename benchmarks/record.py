"""Where each benchmark leaves its figures: `benchmarks/results/<name>.json`, which `report.py` turns into BENCHMARKS.md."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from importlib import metadata
from pathlib import Path

from tasks.common.atomic import write_json

RESULTS = Path(__file__).resolve().parent / "results"
LIBRARIES = ("torch", "onnxruntime", "torch-pruning", "torchao", "mlflow", "prefect", "dvc", "bentoml", "great-expectations")


def machine() -> dict:
    """What the figures were measured on."""
    return {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {name: _version(name) for name in LIBRARIES},
    }


def save(name: str, *, title: str, command: str, markdown: str, figures: dict) -> Path:
    """Record one benchmark: its figures (JSON, for comparisons) and its section of BENCHMARKS.md."""
    path = RESULTS / f"{name}.json"
    write_json(path, {
        "title": title,
        "command": command,
        "measured_at": now(),
        "machine": machine(),
        "markdown": markdown,
        "figures": figures,
    })
    return path


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def previous_figures(name: str) -> dict:
    """The figures last recorded under `name` (empty when none)."""
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text())["figures"] if path.exists() else {}


def table(header: list[str], rows: list[list]) -> str:
    """A markdown table; floats get 4 significant digits."""
    cell = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"
