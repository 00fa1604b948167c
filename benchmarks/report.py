"""Rewrite BENCHMARKS.md from the recorded results (`python -m benchmarks.report`)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.record import RESULTS, machine

TARGET = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
ORDER = ("train_throughput", "train_memory", "orchestration", "fixed_cost", "cli_startup", "compression", "compression_backends", "serving", "serving_overload", "scoring", "sweep", "engines")  # the rest follow alphabetically


def render(results: dict[str, dict]) -> str:
    host = machine()
    names = sorted(results, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))
    parts = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m benchmarks.report` rebuilds it from `benchmarks/results/`). "
        "Every figure below was measured by the command shown under its section, on the machine and "
        "versions listed with it. Benchmarks measure; they do not assert.",
        "",
        f"This file was last written on a {host['cores']}-core {host['cpu']}, Python {host['python']}.",
    ]
    for name in names:
        result = results[name]
        versions = ", ".join(f"{k} {v}" for k, v in result["machine"]["versions"].items() if v != "not installed")
        parts += [
            "", f"## {result['title']}", "",
            f"Measured {result['measured_at']} on {result['machine']['cores']} cores ({result['machine']['cpu']}) "
            f"with `{result['command']}`.  ",
            f"Versions: {versions}.",
            "", result["markdown"].strip(),
        ]
    return "\n".join(parts) + "\n"


def main() -> None:
    results = {p.stem: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))}
    TARGET.write_text(render(results))
    print(f"wrote {TARGET} from {len(results)} result(s)")


if __name__ == "__main__":
    main()
