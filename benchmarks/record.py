"""The record: one typed :class:`Record` per (cell, evaluation architecture), shared by the
writer (:func:`benchmarks.worker.run_cell` through :meth:`benchmarks.store.Store.write_record`)
and the reader (:mod:`analysis.load`).

This module is the one definition of the record schema (``RECORD_SCHEMA``,
``RECORD_SCHEMA_VERSION``) and of the metadata that lets ``analysis`` render tables without a
method list of its own: every record and every planned cell of ``cells.json`` carry the
registry entry of their method (``method_info``: name, display, family, family_display, order,
variant_of, overrides, description, learned -- :meth:`methods.registry.MethodInfo.to_dict`),
the method's ablation switches for the recorded config (``components``), the overrides that
make the cell differ from that entry (``variant_overrides``; none = the method as published)
and the dataset's display name and table order. The whole-dataset baseline is not a
registered method; :data:`WHOLE_INFO` is its entry.

Importing this module needs neither torch nor ``methods`` (``analysis`` reads records without
torch). The functions that consult the registries (:func:`method_fields`,
:func:`dataset_fields`, :func:`enrich_cell`) import them when called, on the writer's side.

Schema versions: 1 (before the registry metadata) and 2 (this one). :meth:`Record.from_json`
reads both; a version-1 record gets what can be derived without the registry: the raw method
name as its display name, family ``other``, no components (tables list such rows by name,
after the registered methods), hard labels, and an evaluation plan made of the recorded
epochs and augmentation. The writer side upgrades them in place with the registry's metadata
(:func:`upgrade_record`; :meth:`benchmarks.store.Store.init` does it for a store's records each
time a sweep is launched into it), so re-running a sweep brings an old store up to date.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from benchmarks.cells import WHOLE

RECORD_SCHEMA = "condensation-bench/record"
RECORD_SCHEMA_VERSION = 2

#: Sort position of entries without one (version-1 records, unregistered names): after every
#: registered method, before the whole-dataset baseline.
UNKNOWN_ORDER = 10**6

#: The registry-style entry of the whole-dataset baseline (train on the full training set; the
#: upper bound of every table): the last row, never compared with the condensation methods.
WHOLE_INFO: dict[str, Any] = {
    "name": WHOLE,
    "display": "Whole dataset",
    "family": "whole_dataset",
    "family_display": "Whole dataset",
    "order": 2 * UNKNOWN_ORDER,
    "variant_of": None,
    "overrides": {},
    "description": "the whole training set, no condensation (upper bound)",
    "learned": False,
}

#: Keys every version of a record has.
REQUIRED_KEYS = ("cell_id", "dataset", "method", "eval_arch", "accuracies", "seed")
#: Keys a version-2 record adds.
REQUIRED_KEYS_V2 = ("method_info", "components", "variant_overrides", "dataset_display", "labels")
#: Cost keys every record carries (``None`` when not measured, e.g. no condensation for
#: the whole dataset); the method's own counters follow under their own names.
COST_KEYS = ("condense_wall_time_s", "condense_peak_memory_mb", "eval_wall_time_s", "eval_peak_memory_mb")
LABEL_KINDS = ("hard", "soft", "teacher")
"""What a record's ``labels`` may say: class ids, the set's own soft labels, or soft labels a
teacher network trained on the whole training set gave the set's images (``benchmarks.teacher``)."""


class RecordError(ValueError):
    """A record that cannot be used; the message says why (one line)."""


def fallback_info(name: str) -> dict[str, Any]:
    """The entry of a method the registry metadata is not known for (version-1 records): the
    raw name as display name, family ``other``, sorted after every registered method."""
    if str(name).lower() == WHOLE:
        return dict(WHOLE_INFO)
    return {"name": str(name), "display": str(name), "family": "other", "family_display": "Other",
            "order": UNKNOWN_ORDER, "variant_of": None, "overrides": {}, "description": "",
            "learned": True}


@dataclass(frozen=True)
class Record:
    """The results of one cell evaluated on one architecture (see the module doc).

    ``method`` is the method name the cell ran as the spec named it; ``method_info`` is the
    registry entry its row belongs to (``{method: cafe, dsa: true}`` belongs to ``cafe_dsa``).
    ``variant_overrides`` are the config overrides beyond that entry (the network field
    excluded: the training architecture has its own column); empty means the published method.
    ``accuracies`` are fractions in [0, 1], one per trained evaluation network. ``labels`` is
    ``hard`` (class ids), ``soft`` (the set's own label distribution per image) or ``teacher``
    (a teacher network's soft labels, ``benchmarks.teacher``). ``eval_plan`` is the
    evaluation protocol as executed (:class:`methods.protocol.EvalPlan`, every field);
    ``selected_epochs`` the epoch each network's accuracy comes from when the plan selects on a
    validation split (None: the final epoch)."""

    cell_id: str
    dataset: str
    ipc: Optional[int]
    method: str
    label: str
    eval_arch: str
    seed: int
    accuracies: tuple[float, ...]
    sweep: str = ""
    overrides: Mapping[str, Any] = field(default_factory=dict)
    method_config: Mapping[str, Any] = field(default_factory=dict)
    method_info: Mapping[str, Any] = field(default_factory=dict)
    components: Mapping[str, bool] = field(default_factory=dict)
    variant_overrides: Mapping[str, Any] = field(default_factory=dict)
    dataset_display: str = ""
    dataset_order: Optional[int] = None
    iterations: Optional[int] = None
    train_arch: Optional[str] = None
    num_eval: Optional[int] = None
    eval_epochs: Optional[int] = None
    eval_augmentation: Optional[str] = None
    eval_plan: Mapping[str, Any] = field(default_factory=dict)
    labels: str = "hard"
    selected_epochs: Optional[tuple[int, ...]] = None
    cost: Mapping[str, Any] = field(default_factory=dict)
    synset_path: Optional[str] = None
    code_version: str = ""
    host: str = ""
    device: str = ""
    created: str = ""
    status: str = "done"
    schema_version: int = RECORD_SCHEMA_VERSION

    @property
    def is_whole(self) -> bool:
        return self.method == WHOLE

    @property
    def entry(self) -> str:
        """The registry name the record's row belongs to."""
        return str(self.method_info.get("name") or self.method)

    @property
    def plain(self) -> bool:
        """True when the cell ran its registry entry without further overrides."""
        return not self.variant_overrides

    def to_json(self) -> dict[str, Any]:
        """The JSON object written to ``records/<cell_id>__<arch>.json``."""
        out: dict[str, Any] = {"schema": RECORD_SCHEMA}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Mapping):
                value = dict(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_json(cls, data: Any) -> "Record":
        """Check and read a record (either schema version); raises :class:`RecordError`."""
        reason = record_problem(data)
        if reason is not None:
            raise RecordError(reason)
        d = dict(data)
        if d["schema_version"] == 1:
            d = _upgrade_v1(d)
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        kwargs["accuracies"] = tuple(float(a) for a in d["accuracies"])
        if kwargs.get("selected_epochs") is not None:
            kwargs["selected_epochs"] = tuple(int(e) for e in kwargs["selected_epochs"])
        for key in ("overrides", "method_config", "method_info", "components", "variant_overrides",
                    "eval_plan", "cost"):
            kwargs[key] = dict(kwargs.get(key) or {})
        kwargs["dataset_display"] = str(kwargs.get("dataset_display") or d["dataset"])
        kwargs["label"] = str(kwargs.get("label") or kwargs["method_info"].get("name") or d["method"])
        return cls(**kwargs)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def record_problem(data: Any) -> Optional[str]:
    """Why ``data`` is not a usable record (one line), or None when it is."""
    if not isinstance(data, dict):
        return f"not a JSON object (got {type(data).__name__})"
    if data.get("schema") != RECORD_SCHEMA:
        return f"schema is {data.get('schema')!r}, expected {RECORD_SCHEMA!r}"
    version = data.get("schema_version")
    if not _is_int(version):
        return f"schema_version is {version!r}, expected an integer"
    if version > RECORD_SCHEMA_VERSION:
        return (f"schema_version {version} is newer than this code understands "
                f"({RECORD_SCHEMA_VERSION}); upgrade the suite")
    if version < 1:
        return f"schema_version {version} is not valid"
    if data.get("status") != "done":
        return f"status is {data.get('status')!r}, not 'done' (partial record)"
    required = REQUIRED_KEYS + (REQUIRED_KEYS_V2 if version >= 2 else ())
    missing = [k for k in required if k not in data]
    if missing:
        return "missing key(s): " + ", ".join(missing)
    for key in ("cell_id", "dataset", "method", "eval_arch"):
        if not isinstance(data[key], str) or not data[key]:
            return f"{key} is {data[key]!r}, expected a non-empty string"
    accs = data["accuracies"]
    if not isinstance(accs, list):
        return f"accuracies is a {type(accs).__name__}, expected a list"
    if not accs:
        return "accuracies is empty"
    for a in accs:
        if not isinstance(a, (int, float)) or isinstance(a, bool) or not math.isfinite(a):
            return f"accuracies holds {a!r}, expected numbers"
        if not 0.0 <= float(a) <= 1.0:
            return f"accuracies holds {a!r}, expected fractions in [0, 1]"
    ipc = data.get("ipc")
    if data["method"] == WHOLE:
        if ipc is not None:
            return f"method '{WHOLE}' must have ipc null, got {ipc!r}"
    elif not _is_int(ipc) or ipc <= 0:
        return f"ipc is {ipc!r}, expected a positive integer"
    if not _is_int(data["seed"]):
        return f"seed is {data['seed']!r}, expected an integer"
    cost = data.get("cost", {})
    if cost is not None and not isinstance(cost, dict):
        return f"cost is a {type(cost).__name__}, expected an object"
    for key in ("overrides", "method_config", "components", "variant_overrides", "eval_plan"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            return f"{key} is a {type(data[key]).__name__}, expected an object"
    if version >= 2:
        info = data["method_info"]
        if not isinstance(info, dict):
            return f"method_info is a {type(info).__name__}, expected an object"
        for key in ("name", "display", "family"):
            if not isinstance(info.get(key), str) or not info.get(key):
                return f"method_info.{key} is {info.get(key)!r}, expected a non-empty string"
        if not _is_int(info.get("order")):
            return f"method_info.order is {info.get('order')!r}, expected an integer"
        bad = [k for k, v in data["components"].items() if not isinstance(v, bool)]
        if bad:
            return f"components {', '.join(map(str, bad))} are not true/false"
        if data["labels"] not in LABEL_KINDS:
            return f"labels is {data['labels']!r}, expected one of {', '.join(LABEL_KINDS)}"
        epochs = data.get("selected_epochs")
        if epochs is not None and (not isinstance(epochs, list) or not all(_is_int(e) for e in epochs)):
            return f"selected_epochs is {epochs!r}, expected a list of integers or null"
    return None


def _upgrade_v1(d: dict[str, Any]) -> dict[str, Any]:
    """What a version-1 record implies in version-2 terms (no registry consulted)."""
    from benchmarks.sweep import ARCH_FIELDS

    out = dict(d)
    out["method_info"] = fallback_info(d["method"])
    out["components"] = {}
    overrides = d.get("overrides") or {}
    out["variant_overrides"] = {k: v for k, v in overrides.items() if k not in ARCH_FIELDS}
    out["dataset_display"] = str(d["dataset"])
    out["labels"] = "hard"  # version 1 stored class-id labels only
    out["eval_plan"] = plan_from_result(d.get("eval_epochs"), d.get("eval_augmentation"))
    return out


def plan_from_result(epochs: Any, augmentation: Any) -> dict[str, Any]:
    """The evaluation plan of an evaluator that reports no plan of its own: the fields it does
    report (epochs, augmentation)."""
    return {"epochs": epochs, "augmentation": None if augmentation is None else str(augmentation)}


def as_plan_dict(plan: Any) -> Optional[dict[str, Any]]:
    """A plan object (a dataclass, an object with ``to_dict``, or a mapping) as plain JSON
    values; None for None."""
    if plan is None:
        return None
    if hasattr(plan, "to_dict"):
        value = plan.to_dict()
    elif dataclasses.is_dataclass(plan) and not isinstance(plan, type):
        value = dataclasses.asdict(plan)
    elif isinstance(plan, Mapping):
        value = dict(plan)
    else:
        raise TypeError(f"evaluation plan of type {type(plan).__name__} is not a dataclass or mapping")
    return json.loads(json.dumps(value, default=_plain))


def _plain(value: Any) -> Any:
    if isinstance(value, (set, tuple)):
        return list(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


# --------------------------------------------------------------------------------------------
# Writer side: metadata from the registries (imports methods / benchmarks.data when called)
# --------------------------------------------------------------------------------------------


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=_plain)


def method_fields(method: str, overrides: Mapping[str, Any],
                  config: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """``method_info``, ``components`` and ``variant_overrides`` of a cell.

    The row's entry is the most specific registered entry of the method's base whose overrides
    the cell's effective config (the named entry's overrides, then the cell's) contains: a cell
    ``{method: cafe, dsa: true}`` belongs to ``cafe_dsa``. ``variant_overrides`` are the cell's
    overrides that differ from that entry's defaults, the network field excluded. ``config``
    is the config the method recorded (:attr:`SyntheticSet.config`); without it the components
    are read from the entry's defaults plus the overrides."""
    if str(method).lower() == WHOLE:
        return {"method_info": dict(WHOLE_INFO), "components": {}, "variant_overrides": {}}
    from benchmarks.sweep import ARCH_FIELDS
    from methods.config import build_config
    from methods.registry import all_method_info, method_info

    named = method_info(method)
    effective = dict(named.overrides)
    effective.update(overrides)
    root = named.variant_of or named.name
    best = named
    for cand in all_method_info():
        if (cand.variant_of or cand.name) != root or len(cand.overrides) <= len(best.overrides):
            continue
        if all(k in effective and _canon(effective[k]) == _canon(v) for k, v in cand.overrides.items()):
            best = cand
    defaults = best.defaults()
    variant = {k: v for k, v in effective.items()
               if k not in ARCH_FIELDS and (k not in defaults or _canon(defaults[k]) != _canon(v))}
    if config is None:
        config = build_config(best.config_class, effective).to_dict()
    return {"method_info": best.to_dict(), "components": dict(best.components(config)),
            "variant_overrides": variant}


def dataset_fields(dataset: str) -> dict[str, Any]:
    """``dataset_display`` (:func:`benchmarks.data.dataset_display`) and ``dataset_order``
    (position in the dataset registry) of a dataset name; a ``tensor:`` file comes after the
    registered datasets."""
    from benchmarks.data import TENSOR_PREFIX, dataset_display, dataset_names

    names = [n for n in dataset_names() if not n.startswith(TENSOR_PREFIX)]
    key = str(dataset).lower()
    return {"dataset_display": dataset_display(dataset),
            "dataset_order": names.index(key) if key in names else len(names)}


def upgrade_record(data: Mapping[str, Any]) -> Optional[dict[str, Any]]:
    """A usable version-1 record rewritten as version 2 with the registry metadata of its
    method (its recorded config decides the components), or None when ``data`` is not a usable
    version-1 record or its method is no longer registered (it then stays as it is and is read
    by its raw name). Every version-1 field is kept."""
    if record_problem(data) is not None or data.get("schema_version") != 1:
        return None
    from methods.errors import MethodError

    d = dict(data)
    whole = d["method"] == WHOLE
    try:
        meta = method_fields(d["method"], dict(d.get("overrides") or {}),
                             None if whole else dict(d.get("method_config") or {}))
    except MethodError:
        return None
    d.update(meta)
    d.update(dataset_fields(d["dataset"]))
    d.setdefault("labels", "hard")  # version 1 stored class-id labels only
    d.setdefault("eval_plan", plan_from_result(d.get("eval_epochs"), d.get("eval_augmentation")))
    d["schema_version"] = RECORD_SCHEMA_VERSION
    return d if record_problem(d) is None else None


def enrich_cell(cell: Mapping[str, Any]) -> dict[str, Any]:
    """A ``Cell.to_json()`` dict plus what ``analysis`` needs to name it when it has no
    record yet (``cells.json``): the method fields and the dataset fields."""
    out = dict(cell)
    out.update(method_fields(str(cell["method"]), dict(cell.get("overrides") or {})))
    out.update(dataset_fields(str(cell["dataset"])))
    return out


__all__ = [
    "COST_KEYS", "LABEL_KINDS", "RECORD_SCHEMA", "RECORD_SCHEMA_VERSION", "Record", "RecordError",
    "UNKNOWN_ORDER", "WHOLE", "WHOLE_INFO", "as_plan_dict", "dataset_fields", "enrich_cell",
    "fallback_info", "method_fields", "plan_from_result", "record_problem", "upgrade_record",
]
