"""Where each stage reads and writes, relative to a project root; dvc.yaml names the same paths."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def params(self) -> Path:
        return self.root / "params.yaml"

    @property
    def sources(self) -> Path:
        return self.root / "data" / "sources"

    @property
    def raw(self) -> Path:
        return self.root / "data" / "raw"

    @property
    def prepared(self) -> Path:
        return self.root / "data" / "prepared"

    @property
    def validation(self) -> Path:
        return self.root / "artifacts" / "validate"

    @property
    def train(self) -> Path:
        return self.root / "artifacts" / "train"

    @property
    def evaluate(self) -> Path:
        return self.root / "artifacts" / "evaluate"

    @property
    def compress(self) -> Path:
        return self.root / "artifacts" / "compress"

    @property
    def package(self) -> Path:
        return self.root / "artifacts" / "package"

    @property
    def promote(self) -> Path:
        return self.root / "artifacts" / "promote"

    @property
    def sweeps(self) -> Path:
        return self.root / "sweeps"

    @property
    def bento_dir(self) -> Path:
        return self.root / "bento"
