"""`bentoml serve` with a Prometheus multiprocess directory of its own:

    python -m bento.front.own_metrics TAG [any `bentoml serve` option]

BentoML keeps every server's multiprocess metric files in one folder under BENTOML_HOME and empties it whenever any
server starts there, so starting a Bento (a roll-out's new back-end, promote's serving check, a test) wiped the
counters of the one serving users, skew counters included. Every Bento this project starts goes through here: its
own fresh temporary folder, removed when it stops."""

from __future__ import annotations

import shutil
import sys
import tempfile


def main(argv: list[str]) -> None:
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml_cli.cli import cli

    directory = tempfile.mkdtemp(prefix="bento-metrics-")
    BentoMLContainer.prometheus_multiproc_dir.set(directory)  # what `bentoml serve` gives its workers
    try:
        cli.main(["serve", *argv], prog_name="bentoml")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def command(tag: str, host: str, port: int) -> list[str]:
    """The command line that serves `tag` on `host:port` this way."""
    return [sys.executable, "-m", "bento.front.own_metrics", tag, "--host", host, "--port", str(port)]


if __name__ == "__main__":
    main(sys.argv[1:])
