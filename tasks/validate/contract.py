"""The data contract: what a dataset is, frozen when its first version is accepted, checked for every later one.

It holds what a model trained on one version relies on in the next: the kind of data, the problem type, the
ordered class vocabulary (output i means class i), the image size and channels, a table's columns and their kinds.
It is kept in the validation reference (artifacts/validate/reference.json, beside the drift statistics), logged
to MLflow with each validation and shown in the run report. Switching to another dataset on purpose is
`mlops run --new-dataset`, which archives the old reference.
"""

from __future__ import annotations

from tasks.common.errors import ValidationFailed

NEW_DATASET_HINT = ("switching to another dataset on purpose? run `mlops run --new-dataset` (it archives "
                    "artifacts/validate/reference.json, and the next accepted version sets the contract)")


def contract_of(data) -> dict:
    """The contract of a data version (tasks/common/outputs.py DataDescription)."""
    contract = {"kind": data.kind, "problem": data.problem, "classes": list(data.classes)}
    if data.kind == "images":
        contract |= {"image_shape": list(data.image_shape), "channels": data.channels}
    else:
        contract |= {"columns": dict(data.columns)}
    return contract


def differences(frozen: dict, found: dict) -> list[str]:
    """Each way `found` breaks `frozen`, in words: the field, what the contract says, what this version has."""
    problems = []
    for key in ("kind", "problem", "image_shape", "channels"):
        if key in frozen and frozen.get(key) != found.get(key):
            problems.append(f"{key}: the contract says {frozen[key]!r}, this version has {found.get(key)!r}")
    old, new = frozen.get("classes", []), found.get("classes", [])
    if old != new:
        missing, added = [c for c in old if c not in new], [c for c in new if c not in old]
        detail = "; ".join(part for part in (f"missing {missing}" if missing else "",
                                             f"new {added}" if added else "",
                                             "same names in another order" if not missing and not added else "") if part)
        problems.append(f"classes: {detail} (the contract has {len(old)}: {_short(old)})")
    if "columns" in frozen and frozen["columns"] != found.get("columns"):
        now = found.get("columns") or {}
        missing = [c for c in frozen["columns"] if c not in now]
        added = [c for c in now if c not in frozen["columns"]]
        changed = [f"{c} {frozen['columns'][c]}→{now[c]}" for c in frozen["columns"] if c in now and now[c] != frozen["columns"][c]]
        detail = "; ".join(part for part in (f"missing {missing}" if missing else "", f"new {added}" if added else "",
                                             f"kind changed: {', '.join(changed)}" if changed else "") if part)
        problems.append(f"columns: {detail}")
    return problems


def check(frozen: dict | None, found: dict) -> None:
    """Raise ValidationFailed naming every difference between this version and the frozen contract."""
    if frozen is None:
        return
    problems = differences(frozen, found)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise ValidationFailed(f"this data version breaks the data contract frozen when the dataset's first version "
                               f"was accepted:\n{lines}\n{NEW_DATASET_HINT}")


def _short(names: list[str], limit: int = 12) -> str:
    return "[" + ", ".join(names[:limit]) + (", …" if len(names) > limit else "") + "]"
