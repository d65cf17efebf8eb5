"""Evaluation plans as the records store them: the fields that decide a protocol, the label
type, and the audit that flags a table mixing protocols.

Every record stores the effective evaluation plan (``methods.protocol.ResolvedPlan.to_dict``:
epochs, augmentation and lr as run; the teacher's fields for teacher labels). Two records were
evaluated under the same protocol when their :data:`PROTOCOL_FIELDS` agree; the fields that
only feed the resolution (``dsa``, ``dsa_strategy``, ``epochs_no_aug``, ``epochs_with_aug``) are
left out because the resolved ``epochs`` and ``augmentation`` already say what ran, and the
teacher's measured accuracy and seed describe the teacher rather than the protocol. Loss and
temperature matter only with soft (own or teacher) labels.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping, Optional

import pandas as pd

PROTOCOL_FIELDS = (
    "labels", "loss", "temperature", "teacher_arch", "teacher_epochs", "teacher_per_view",
    "lr", "lr_source", "optimizer", "momentum", "weight_decay", "batch_size", "schedule", "epochs",
    "augmentation", "zca", "selection", "val_fraction",
)
SOFT_ONLY = ("loss", "temperature")
TEACHER_ONLY = ("teacher_arch", "teacher_epochs", "teacher_per_view")


def plan_of(value: Any) -> dict[str, Any]:
    """A record's stored plan (a JSON string in the loaded frames, or a mapping) as a dict."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str) and value:
        try:
            out = json.loads(value)
        except json.JSONDecodeError:
            return {}
        return out if isinstance(out, dict) else {}
    return {}


def protocol(plan: Mapping[str, Any], labels: Optional[str] = None) -> dict[str, Any]:
    """The protocol fields of ``plan`` (module doc); ``labels`` (the record's) wins over the
    plan's own, which version-1 records lack."""
    p = {k: plan.get(k) for k in PROTOCOL_FIELDS if k in plan}
    if labels is not None:
        p["labels"] = labels
    kind = p.get("labels") or "hard"
    p["labels"] = kind
    if kind == "hard":
        for k in SOFT_ONLY:
            p.pop(k, None)
    if kind != "teacher":
        for k in TEACHER_ONLY:
            p.pop(k, None)
    return p


def protocol_key(plan: Mapping[str, Any], labels: Optional[str] = None, drop: Iterable[str] = ()) -> str:
    """A canonical string of :func:`protocol` without the fields ``drop``."""
    p = protocol(plan, labels)
    for k in drop:
        p.pop(k, None)
    return json.dumps(p, sort_keys=True, default=str)


def differing_fields(frame: pd.DataFrame) -> dict[str, list[str]]:
    """Protocol field -> the distinct values (as printed) over the rows of ``frame`` (runs or
    records with ``eval_plan`` and ``labels``), for the fields that take more than one value."""
    values: dict[str, set[str]] = {}
    protocols = [protocol(plan_of(pl), lab) for pl, lab in zip(frame["eval_plan"], frame["labels"])]
    for key in PROTOCOL_FIELDS:
        seen = {_show(p.get(key)) for p in protocols if key in p}
        if any(key not in p for p in protocols) and seen and key not in SOFT_ONLY + TEACHER_ONLY:
            seen.add("not recorded")
        if len(seen) > 1:
            values[key] = sorted(seen)
    return values


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def audit_note(frame: pd.DataFrame, what: str = "rows") -> Optional[str]:
    """A table note when the ``frame`` behind a table mixes protocols: names every differing
    field with its values; None when all rows share one protocol."""
    if frame.empty or "eval_plan" not in frame:
        return None
    diff = differing_fields(frame)
    if not diff:
        return None
    parts = "; ".join(f"{k} ({' / '.join(v)})" for k, v in diff.items())
    return (f"Protocol audit: the {what} of this table were evaluated under different plans: {parts}. "
            "Compare rows only under one plan, or see the scores table for gains over random under each.")
