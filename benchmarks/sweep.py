"""Sweep specs: a YAML file -> validated, expanded cells with stable ids.

A sweep is data, not a script. The spec (see ``benchmarks/sweeps/example_commented.yaml`` for
every key, documented) names datasets x IPCs x methods (each a registered method name, optionally
with config overrides and a label) x seeds, the evaluation architectures, the number of
evaluation networks, budgets, the output folder and the cluster profile. :func:`load_sweep`
checks the *whole* spec before anything runs and raises :class:`SpecError` listing every problem
with its YAML path (``methods[2].discrimination_weight: unknown config key ...``).

Evaluation-plan overrides (``eval:``, a mapping of :class:`methods.protocol.EvalPlan` fields,
e.g. ``{selection: best_val}`` or ``{lr: 0.02}``) can be set for the whole sweep and per method
entry; an entry's keys win over the sweep's. They are checked with
:func:`methods.protocol.plan_problems`, stored canonicalised on each :class:`Cell` (``eval``)
and handed to the evaluator by the worker. ``eval: {epochs: N}`` and ``budgets.eval_epochs``
set the same thing; a spec may use one of them per method.

Teacher labels (``eval: {labels: teacher, temperature: 4, teacher_epochs: 20}``,
:mod:`benchmarks.teacher`) are checked the same way (:func:`benchmarks.teacher.overrides_problems`).

**Same-protocol random baseline** (``random_baseline: true``, the default; DD-Ranking's
"improvement over random", Li et al., arXiv 2505.13300): for every cell of a method other than
``random`` and ``whole``, the expansion also plans a ``random`` cell with the same dataset, IPC,
seed, evaluation architectures, number of networks, evaluation epochs and evaluation plan --
the method's own plan for that dataset (:meth:`methods.base.Method.eval_plan`) with the
entry's ``eval:`` overrides -- written as the overrides in which that plan differs from
random's own (so a method evaluated like random shares the plain ``random`` cell). Identical
baselines are planned once. Two fields cannot carry over and are translated: a learned
learning rate (``lr_source: learned``) becomes the plan's fixed ``lr`` (a random set has no
learned lr; the cell records the lr it used), and the set's own soft labels (``labels: soft``)
become teacher labels with the same loss and temperature (a random set has no learned labels).
A baseline is labelled ``random (plan of <methods>)``. Plans that a method switches only when
it condenses (soft labels, ZCA, a learned lr stored with the set, :meth:`Method._synset`) are
not known here; ``analysis.scores`` pairs each record with the random record of the same
effective plan and names the cell to run where none matches.

The validator (one pass collecting every problem of a spec, so each check sees the state the
earlier ones built) is most of this file and stays in one piece, hence its length.

Relative paths in a spec (``output``, ``data_root``, ``tensor:`` datasets) are resolved against
the current working directory of the launcher, like every other command-line path; jobs get the
absolute paths.

Why ~700 lines: the validator reports every problem of a spec at once (names, types, IPCs,
data, profile, outputs, evaluation overrides), which needs it next to the expansion it checks;
cells and ids live in :mod:`benchmarks.cells`, profiles in :mod:`benchmarks.profile`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import yaml

from benchmarks import UserError
from benchmarks.cells import WHOLE, Cell, cell_id
from benchmarks.profile import ClusterProfile, read_profile

SWEEP_DIR = Path(__file__).resolve().parent / "sweeps"

TOP_KEYS = {
    "name": "sweep name (default: the spec file's stem)",
    "description": "free text",
    "datasets": "list of dataset names",
    "ipcs": "list of images-per-class",
    "methods": "list of method names or {method: NAME, label: ..., budgets: {...}, <overrides>}",
    "train_arch": "architecture used during condensation (default: each method's own)",
    "eval_archs": "list of evaluation architectures",
    "seeds": "list of integer seeds",
    "num_eval": "number of evaluation networks per (cell, architecture)",
    "budgets": "{iterations: int|null, eval_epochs: int|null}",
    "eval": "evaluation-plan overrides {field: value} for every method (methods.protocol.EvalPlan)",
    "random_baseline": "true (default): plan a random-selection cell under each method's evaluation plan",
    "output": "results folder",
    "profile": "cluster profile: name of slurm/<name>.yaml or a path",
    "data_root": "folder with the datasets",
    "download": "download missing torchvision datasets in the jobs",
    "device": "auto | cpu | cuda | cuda:N | mps",
    "compile": "auto (default) | on | off: compiled hot paths of condensation and evaluation (methods.compile)",
}
BUDGET_KEYS = ("iterations", "eval_epochs")
METHOD_ENTRY_KEYS = ("method", "label", "budgets", "eval", "ipcs", "seeds", "num_eval", "snapshots")
"""Keys of a method entry that are not config overrides; ``ipcs``/``seeds``/``num_eval`` replace
the sweep's own lists for that entry only (e.g. an expensive method at IPC 1 and one seed);
``snapshots`` (a learned method only: iteration counts below its budget) keeps the loop state at
those iterations of each of its runs and evaluates it as a learning curve
(:mod:`benchmarks.curves`; not part of the cell ids)."""
ARCH_FIELDS = ("model", "feature_net", "net", "arch")
"""Config fields naming the network a method condenses with (first one present wins)."""

_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class SpecError(UserError):
    """A sweep spec with problems; ``problems`` lists every one as ``path: message``."""

    def __init__(self, problems: Sequence[str], source: str = "sweep spec") -> None:
        self.problems = list(problems)
        self.source = source
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source} has {len(self.problems)} problem(s); nothing was submitted:\n{lines}")


# --------------------------------------------------------------------------------------------
# The loaded sweep
# --------------------------------------------------------------------------------------------


@dataclass
class Sweep:
    """A validated sweep: its cells and where/how they run."""

    name: str
    cells: list[Cell]
    output: Path
    data_root: Path
    download: bool
    device: str
    profile: Optional[ClusterProfile]
    spec: dict[str, Any]
    spec_text: str
    source: str = "<spec>"
    compile: str = "auto"
    """Compile mode of the cells' condensation and evaluation (never part of a cell id)."""


def read_spec(source: str | os.PathLike) -> tuple[dict[str, Any], str]:
    """Parse a spec file (or a sweep name from ``benchmarks/sweeps``); raise SpecError."""
    path = resolve_spec_path(source)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError([f"cannot read {path}: {exc.strerror or exc}"], str(source)) from exc
    return parse_spec_text(text, str(path)), text


def resolve_spec_path(source: str | os.PathLike) -> Path:
    path = Path(source)
    if path.is_file():
        return path
    for candidate in (SWEEP_DIR / f"{source}.yaml", SWEEP_DIR / str(source)):
        if candidate.is_file():
            return candidate
    shipped = ", ".join(sorted(p.stem for p in SWEEP_DIR.glob("*.yaml")))
    raise SpecError([f"spec file {path} does not exist (shipped sweeps: {shipped})"], str(source))


def parse_spec_text(text: str, source: str = "<spec>") -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError([f"<yaml>: {where}invalid YAML ({problem})"], source) from exc
    if not isinstance(data, dict):
        raise SpecError(
            [f"<root>: a sweep spec must be a mapping of keys ({', '.join(TOP_KEYS)}), got "
             f"{type(data).__name__}"], source)
    return data


def load_sweep(
    source: str | os.PathLike,
    *,
    output: Optional[str | os.PathLike] = None,
    profile: Optional[str] = None,
    check_data: bool = True,
    check_output: bool = True,
    need_profile: bool = False,
) -> Sweep:
    """Read, validate and expand a spec file; raise :class:`SpecError` with every problem.

    ``output``/``profile`` override the spec's values (command-line flags). ``need_profile``
    (slurm executor) makes a missing profile an error and defaults it to ``gpu``."""
    spec, text = read_spec(source)
    path = resolve_spec_path(source)
    default_name = path.stem
    return build_sweep(spec, text=text, source=str(path), default_name=default_name, output=output,
                       profile=profile, check_data=check_data, check_output=check_output,
                       need_profile=need_profile)


def build_sweep(
    spec: Mapping[str, Any],
    *,
    text: Optional[str] = None,
    source: str = "<spec>",
    default_name: str = "sweep",
    output: Optional[str | os.PathLike] = None,
    profile: Optional[str] = None,
    check_data: bool = True,
    check_output: bool = True,
    need_profile: bool = False,
) -> Sweep:
    """Validate and expand an already-parsed spec (see :func:`load_sweep`)."""
    spec = dict(spec)
    if output is not None:
        spec["output"] = str(output)
    if profile is not None:
        spec["profile"] = profile
    v = _Validator(spec, check_data=check_data, check_output=check_output, need_profile=need_profile)
    cells = v.run()
    if v.problems:
        raise SpecError(v.problems, source)
    return Sweep(
        name=str(spec.get("name") or default_name),
        cells=cells,
        output=v.output,
        data_root=v.data_root,
        download=bool(spec.get("download", False)),
        device=str(spec.get("device", "auto")),
        compile=str(spec.get("compile", "auto")),
        profile=v.profile,
        spec=dict(spec),
        spec_text=text if text is not None else yaml.safe_dump(dict(spec), sort_keys=False),
        source=source,
    )


# --------------------------------------------------------------------------------------------
# Validation + expansion
# --------------------------------------------------------------------------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _as_list(v: Any) -> list:
    return list(v) if isinstance(v, (list, tuple)) else [v]


@dataclass
class _MethodEntry:
    where: str
    method: str
    label: str
    overrides: dict[str, Any]
    iterations: Optional[int]
    eval_epochs: Optional[int]
    train_arch: Optional[str]
    eval: dict[str, Any]
    method_obj: Any = None
    """The configured method (None for ``whole``): its evaluation plan is the baseline's."""
    ipcs: Optional[list[int]] = None
    seeds: Optional[list[int]] = None
    num_eval: Optional[int] = None
    """The entry's own ``ipcs``/``seeds``/``num_eval`` (None: the sweep's)."""
    snapshots: tuple[int, ...] = ()
    """Iterations whose loop state each run keeps and evaluates (learning curve), ascending."""

    def set_configuration(self) -> str:
        """What makes this line's sets and evaluations, apart from its ipcs/seeds/num_eval
        lists: lines with equal configurations are one table row and may share a label."""
        return json.dumps([self.method, self.overrides, self.iterations, self.eval_epochs, self.train_arch,
                           self.eval], sort_keys=True, default=str)


class _Validator:
    """Collects every problem of a spec (never stops at the first) and builds its cells."""

    def __init__(self, spec: dict[str, Any], *, check_data: bool, check_output: bool, need_profile: bool):
        self.spec = spec
        self.check_data = check_data
        self.check_output = check_output
        self.need_profile = need_profile
        self.problems: list[str] = []
        self.output = Path("results")
        self.data_root = Path("data")
        self.profile: Optional[ClusterProfile] = None
        self.eval: dict[str, Any] = {}

    def add(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    # -- top level --------------------------------------------------------------------------
    def run(self) -> list[Cell]:
        from benchmarks import data as bdata

        s = self.spec
        for key in s:
            if key not in TOP_KEYS:
                self.add(str(key), f"unknown key; valid keys: {', '.join(TOP_KEYS)}")
        names = [m.get("method") if isinstance(m, dict) else m for m in _as_list(s.get("methods") or [])]
        only_whole = bool(names) and all(isinstance(n, str) and n.lower() == WHOLE for n in names)
        for key in ("datasets", "ipcs", "methods"):
            if key == "ipcs" and only_whole and s.get(key) in (None, [], ""):
                continue  # the whole-dataset baseline has no IPC
            if key not in s or s[key] in (None, [], ""):
                hint = "; only a sweep of 'whole' alone may leave it out" if key == "ipcs" else ""
                self.add(key, f"required (a non-empty list){hint}")
        if "name" in s and not isinstance(s["name"], str):
            self.add("name", f"must be a string, got {s['name']!r}")
        elif isinstance(s.get("name"), str) and not re.fullmatch(r"[A-Za-z0-9_.\-]+", s["name"]):
            self.add("name", f"use letters, digits, '_', '-', '.' only, got {s['name']!r}")

        # scalars
        if "random_baseline" in s and not isinstance(s["random_baseline"], bool):
            self.add("random_baseline", f"must be true or false, got {s['random_baseline']!r}")
        if "download" in s and not isinstance(s["download"], bool):
            self.add("download", f"must be true or false, got {s['download']!r}")
        device = s.get("device", "auto")
        if not isinstance(device, str) or not _DEVICE_RE.match(device):
            self.add("device", f"must be auto, cpu, cuda, cuda:N or mps, got {device!r}")
        if s.get("compile", "auto") not in ("auto", "on", "off"):
            self.add("compile", f"must be auto, on or off, got {s['compile']!r}")
        num_eval = self._num_eval(s.get("num_eval", 5), "num_eval")
        budgets = s.get("budgets") or {}
        iterations, eval_epochs = self._budgets(budgets, "budgets", None, None)
        self.eval = self._eval_overrides(s.get("eval", {}), "eval", {}, eval_epochs) or {}

        seeds = self._seeds(s.get("seeds", [0]), "seeds")

        # paths
        data_root = s.get("data_root", "data")
        if not isinstance(data_root, str):
            self.add("data_root", f"must be a path string, got {data_root!r}")
            data_root = "data"
        self.data_root = Path(data_root).expanduser().resolve()
        output = s.get("output")
        if output is None:
            self.add("output", "required (the results folder), e.g. output: results/my-sweep")
        elif not isinstance(output, str) or not output.strip():
            self.add("output", f"must be a path string, got {output!r}")
        else:
            self.output = Path(output).expanduser().resolve()
            if self.check_output:
                msg = _unwritable(self.output)
                if msg:
                    self.add("output", msg)
        self._profile(s.get("profile"))

        # architectures
        from methods.networks import canonical_network_name

        eval_archs: list[str] = []
        raw_archs = s.get("eval_archs", ["ConvNet"])
        if raw_archs in (None, []):
            self.add("eval_archs", "must name at least one architecture")
        for i, arch in enumerate(_as_list(raw_archs or [])):
            try:
                name = canonical_network_name(arch)
            except Exception as exc:  # MethodError
                self.add(f"eval_archs[{i}]", str(exc))
                continue
            if name in eval_archs:
                self.add(f"eval_archs[{i}]", f"duplicate architecture {name}")
            else:
                eval_archs.append(name)
        train_arch = s.get("train_arch")
        if train_arch is not None:
            try:
                train_arch = canonical_network_name(train_arch)
            except Exception as exc:
                self.add("train_arch", str(exc))
                train_arch = None

        # datasets
        datasets: list[tuple[str, str, Any]] = []  # (where, name, info)
        for i, name in enumerate(_as_list(s.get("datasets") or [])):
            where = f"datasets[{i}]"
            if not isinstance(name, str):
                self.add(where, f"must be a dataset name, got {name!r}")
                continue
            try:
                key = bdata.canonical_dataset_name(name)
                if key.startswith(bdata.TENSOR_PREFIX):
                    key = bdata.TENSOR_PREFIX + str(Path(key[len(bdata.TENSOR_PREFIX):]).expanduser().resolve())
                if any(key == d[1] for d in datasets):
                    self.add(where, f"duplicate dataset {key}")
                    continue
                missing = None
                if self.check_data or bdata.is_tensor_dataset(key):
                    missing = bdata.check_available(key, self.data_root, bool(s.get("download", False)))
                    if missing:
                        self.add(where, missing)
                if missing and bdata.is_tensor_dataset(key):
                    continue  # no file: no geometry to check IPCs against
                info = bdata.dataset_info(key)
            except bdata.DataError as exc:
                self.add(where, str(exc))
                continue
            datasets.append((where, key, info))

        self.datasets = datasets
        ipcs = self._ipcs(s.get("ipcs") or [], "ipcs")

        entries = [
            e for i, m in enumerate(_as_list(s.get("methods") or []))
            if (e := self._method(m, f"methods[{i}]", iterations, eval_epochs, train_arch)) is not None
        ]

        if self.problems:
            return []
        return self._expand(datasets, ipcs, entries, seeds, eval_archs, num_eval)

    def _num_eval(self, raw: Any, where: str) -> int:
        if not _is_int(raw) or raw < 1:
            self.add(where, f"must be an integer >= 1, got {raw!r}")
            return 1
        return int(raw)

    def _seeds(self, raw: Any, where: str) -> list[int]:
        seeds: list[int] = []
        for i, seed in enumerate(_as_list(raw)):
            if not _is_int(seed) or seed < 0:
                self.add(f"{where}[{i}]", f"must be a non-negative integer, got {seed!r}")
            else:
                seeds.append(int(seed))
        if len(set(seeds)) != len(seeds):
            self.add(where, f"contains duplicates: {seeds}")
        return seeds

    def _ipcs(self, raw: Any, where: str) -> list[int]:
        """Positive, distinct IPCs, each possible for every dataset of the sweep."""
        ipcs: list[int] = []
        for i, ipc in enumerate(_as_list(raw)):
            if not _is_int(ipc) or ipc < 1:
                self.add(f"{where}[{i}]", f"must be a positive integer, got {ipc!r}")
            elif ipc in ipcs:
                self.add(f"{where}[{i}]", f"duplicate IPC {ipc}")
            else:
                ipcs.append(int(ipc))
                for dwhere, key, info in self.datasets:
                    limit = info.min_train_per_class
                    if limit is not None and ipc > limit:
                        self.add(
                            f"{where}[{i}]",
                            f"IPC {ipc} is impossible for {dwhere}={key}: its smallest class has "
                            f"{limit} training images (choose IPC <= {limit})",
                        )
        return ipcs

    def _budgets(self, b: Any, where: str, iterations: Optional[int], eval_epochs: Optional[int]):
        if not isinstance(b, dict):
            self.add(where, f"must be a mapping {{iterations: ..., eval_epochs: ...}}, got {b!r}")
            return iterations, eval_epochs
        out = {"iterations": iterations, "eval_epochs": eval_epochs}
        for key, value in b.items():
            if key not in BUDGET_KEYS:
                self.add(f"{where}.{key}", f"unknown budget; valid: {', '.join(BUDGET_KEYS)}")
            elif value is not None and (not _is_int(value) or value < 1):
                self.add(f"{where}.{key}", f"must be a positive integer or null, got {value!r}")
            else:
                out[key] = value
        return out["iterations"], out["eval_epochs"]

    def _profile(self, name: Any) -> None:
        if name is None and self.need_profile:
            name = "gpu"
        if name is None:
            return
        if not isinstance(name, str):
            self.add("profile", f"must be a profile name or path, got {name!r}")
            return
        problems, self.profile, _ = read_profile(name, "profile")
        self.problems.extend(problems)

    def _method(self, m: Any, where: str, iterations, eval_epochs, train_arch) -> Optional[_MethodEntry]:
        from methods import available_methods
        from methods.config import config_problems
        from methods.registry import method_base_overrides, method_config_class

        if isinstance(m, str):
            m = {"method": m}
        if not isinstance(m, dict):
            self.add(where, f"must be a method name or a mapping with 'method', got {m!r}")
            return None
        name = m.get("method")
        if not isinstance(name, str):
            self.add(f"{where}.method", "required: the name of a registered method or 'whole'")
            return None
        name = name.lower()
        label = m.get("label")
        if label is not None and not isinstance(label, str):
            self.add(f"{where}.label", f"must be a string, got {label!r}")
            label = None
        it, ep = self._budgets(m.get("budgets") or {}, f"{where}.budgets", iterations, eval_epochs)
        own = {
            "ipcs": self._ipcs(m["ipcs"], f"{where}.ipcs") if "ipcs" in m else None,
            "seeds": self._seeds(m["seeds"], f"{where}.seeds") if "seeds" in m else None,
            "num_eval": self._num_eval(m["num_eval"], f"{where}.num_eval") if "num_eval" in m else None,
        }
        for key in ("ipcs", "seeds"):
            if own[key] == []:
                self.add(f"{where}.{key}", "must list at least one value (leave it out to use the sweep's)")
        own_eval = m.get("eval", {})
        plan = self._eval_overrides(own_eval, f"{where}.eval", self.eval, ep)
        if plan is None:
            return None
        overrides = {k: v for k, v in m.items() if k not in METHOD_ENTRY_KEYS}
        if name == WHOLE:
            for k in overrides:
                self.add(f"{where}.{k}", "the whole-dataset baseline takes no config overrides")
            if own["ipcs"] is not None:
                self.add(f"{where}.ipcs", "the whole-dataset baseline has no IPC")
            if "snapshots" in m:
                self.add(f"{where}.snapshots", "the whole-dataset baseline has no iterations to keep; remove it")
            return _MethodEntry(where, WHOLE, label or "whole dataset" + _eval_suffix(own_eval, plan),
                                {}, None, ep, None, plan, seeds=own["seeds"], num_eval=own["num_eval"])
        valid = available_methods()
        if name not in valid:
            self.add(f"{where}.method", f"unknown method '{m['method']}'; valid methods: "
                     f"{', '.join(sorted(valid))}, {WHOLE}")
            return None
        cls = method_config_class(name)
        fields = {f.name for f in dataclasses.fields(cls)}
        arch_field = next((f for f in ARCH_FIELDS if f in fields), None)
        if train_arch is not None and arch_field and arch_field not in overrides:
            overrides[arch_field] = train_arch
        if arch_field and arch_field in overrides and isinstance(overrides[arch_field], str):
            from methods.networks import canonical_network_name

            try:
                overrides[arch_field] = canonical_network_name(overrides[arch_field])
            except Exception as exc:
                self.add(f"{where}.{arch_field}", str(exc))
                return None
        before = len(self.problems)
        for problem in config_problems(cls, overrides):
            key = re.search(r"config key '([^']+)'", problem)
            self.add(f"{where}.{key.group(1) if key else 'overrides'}", problem)
        if len(self.problems) > before:
            return None
        try:
            from methods import get_method

            method = get_method(name, overrides)
        except Exception as exc:  # MethodError from the config's own validate()
            self.add(where, str(exc))
            return None
        snapshots: tuple[int, ...] = ()
        if not getattr(method, "learned", True):
            it = None  # coresets have no iteration budget: keep their cell ids independent of it
            if "snapshots" in m:
                self.add(f"{where}.snapshots", f"{name} is not a learned method: it has no iterations to keep "
                         "(snapshots apply to learned methods only); remove it")
        elif "snapshots" in m:
            budget = it if it is not None else getattr(method.config, "iterations", None)
            snapshots = self._snapshots(m["snapshots"], f"{where}.snapshots", budget)
        full = method.config.to_dict()
        canonical = {k: full[k] for k in overrides if k in full}
        base = method_base_overrides(name)
        arch = full.get(arch_field) if arch_field else None
        if label is None:
            label = name if not canonical else name + "(" + ", ".join(
                f"{k}={v}" for k, v in sorted(canonical.items()) if k not in base) + ")"
            label += _eval_suffix(own_eval, plan)
        return _MethodEntry(where, name, label, canonical, it, ep, arch, plan, method, **own, snapshots=snapshots)

    def _snapshots(self, raw: Any, where: str, budget: Optional[int]) -> tuple[int, ...]:
        """Distinct positive iteration counts below ``budget`` (when known), ascending."""
        if not isinstance(raw, list) or not raw:
            self.add(where, f"must be a non-empty list of iteration counts, e.g. [10, 50, 200], got {raw!r}")
            return ()
        out: list[int] = []
        for i, n in enumerate(raw):
            if not _is_int(n) or n < 1:
                self.add(f"{where}[{i}]", f"must be a positive integer (an iteration count), got {n!r}")
            elif budget is not None and n >= budget:
                self.add(f"{where}[{i}]", f"{n} is not below the budget of {budget} iterations (the final set is "
                         "the last point of the curve already); choose a smaller count")
            elif n in out:
                self.add(f"{where}[{i}]", f"duplicate iteration count {n}")
            else:
                out.append(int(n))
        return tuple(sorted(out))

    def _eval_overrides(self, raw: Any, where: str, inherited: Mapping[str, Any],
                        eval_epochs: Optional[int]) -> Optional[dict[str, Any]]:
        """``inherited`` updated with the overrides ``raw`` (``eval:`` of the spec or of a method
        entry: the entry's keys win), checked by ``methods.protocol.plan_problems`` and with
        canonical values; None (problems added) when they are invalid."""
        from benchmarks.teacher import canonical_overrides, overrides_problems

        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            self.add(where, f"must be a mapping of evaluation-plan overrides {{field: value}}, got {raw!r}")
            return None
        merged = {**inherited, **{str(k): v for k, v in raw.items()}}
        if not merged:
            return {}
        problems = overrides_problems(merged)
        for problem in problems:
            key = re.search(r"key '([^']+)'", problem) or re.match(r"(\w+)[: ]", problem)
            name = key.group(1) if key else None
            self.add(f"{where}.{name}" if name in merged and name in raw else where, problem)
        if "epochs" in merged and eval_epochs is not None:
            self.add(f"{where}.epochs" if "epochs" in raw else where,
                     f"sets the evaluation epochs that budgets.eval_epochs={eval_epochs} sets too; keep one")
            return None
        if problems:
            return None
        full = canonical_overrides(merged)
        return {k: full[k] for k in sorted(merged)}

    def _expand(self, datasets, ipcs, entries, seeds, eval_archs, num_eval) -> list[Cell]:
        cells: list[Cell] = []
        seen: dict[str, str] = {}
        labels: dict[str, tuple[str, str]] = {}  # label -> (first line, its set configuration)
        for e in entries:
            # one label is one table row: two lines may share it only when they make the same
            # sets (they differ in their ipcs/seeds/num_eval/snapshots lists alone)
            first = labels.setdefault(e.label, (e.where, e.set_configuration()))
            if first[0] != e.where and first[1] != e.set_configuration():
                self.add(f"{e.where}.label", f"label '{e.label}' is already used by {first[0]}, which makes "
                         "other sets (method, overrides, budgets or eval differ); give this line its own label")
        for _, dataset, _info in datasets:
            for e in entries:
                cell_ipcs: list[Optional[int]] = [None] if e.method == WHOLE else list(e.ipcs or ipcs)
                for ipc in cell_ipcs:
                    for seed in e.seeds or seeds:
                        fields = dict(dataset=dataset, ipc=ipc, method=e.method, overrides=e.overrides,
                                      seed=seed, iterations=e.iterations, num_eval=e.num_eval or num_eval,
                                      eval_epochs=e.eval_epochs, train_arch=e.train_arch, eval=e.eval)
                        cid = cell_id(**fields)
                        if cid in seen:
                            if seen[cid] != e.where:
                                self.add(e.where, f"runs exactly the same cells as {seen[cid]} "
                                         "(same method, overrides and budgets); remove one")
                            continue
                        seen[cid] = e.where
                        cells.append(Cell(cell_id=cid, label=e.label, eval_archs=tuple(eval_archs),
                                          snapshots=e.snapshots, **fields))
        if self.spec.get("random_baseline", True) is True and not self.problems:
            cells.extend(self._baselines(datasets, ipcs, entries, seeds, eval_archs, num_eval, seen))
        return [] if self.problems else cells

    def _baselines(self, datasets, ipcs, entries, seeds, eval_archs, num_eval, seen) -> list[Cell]:
        """The same-protocol random cells of every non-random entry (module doc), each once."""
        from methods import get_method

        random_method = get_method(RANDOM, {})
        planned: dict[str, dict[str, Any]] = {}  # cell id -> fields and the methods it serves
        for _, dataset, _info in datasets:
            stub = _stub_data(dataset)
            own = random_method.eval_plan(stub)
            for e in entries:
                if e.method in (WHOLE, RANDOM) or e.method_obj is None:
                    continue
                overrides = baseline_overrides(e.method_obj.eval_plan(stub), e.eval, own, self.eval, e.eval_epochs,
                                               [(dataset, a) for a in eval_archs])
                for ipc in e.ipcs or ipcs:
                    for seed in e.seeds or seeds:
                        fields = dict(dataset=dataset, ipc=ipc, method=RANDOM, overrides={}, seed=seed,
                                      iterations=None, num_eval=e.num_eval or num_eval, eval_epochs=e.eval_epochs,
                                      train_arch=None, eval=overrides)
                        cid = cell_id(**fields)
                        if cid in seen and seen[cid] != "baseline":
                            continue  # the sweep runs this random cell already
                        seen[cid] = "baseline"
                        entry = planned.setdefault(cid, {"fields": fields, "for": []})
                        if e.label not in entry["for"]:
                            entry["for"].append(e.label)
        out = []
        for cid, entry in planned.items():
            label = RANDOM if not entry["fields"]["eval"] else f"{RANDOM} (plan of {', '.join(entry['for'])})"
            out.append(Cell(cell_id=cid, label=label, eval_archs=tuple(eval_archs), **entry["fields"]))
        return out


RANDOM = "random"
"""The registered random-selection method: the baseline every method is compared with."""


def baseline_overrides(method_plan: Any, entry_eval: Mapping[str, Any], random_plan: Any,
                       sweep_eval: Mapping[str, Any], eval_epochs: Optional[int] = None,
                       where: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    """The ``eval:`` overrides of the random cell evaluated like a method's cells: the method's
    plan (``method_plan``, an :class:`~methods.protocol.EvalPlan`) with the entry's overrides,
    as the fields that differ from ``random_plan`` plus every key the sweep sets for all
    methods (so the plain ``random`` cell of the sweep is the same cell when nothing else
    differs). ``lr_source: learned`` becomes the plan's fixed ``lr``; ``labels: soft``
    (the set's own) becomes ``labels: teacher`` with the same loss and temperature; the
    ``teacher_*`` keys carry over. Fields that cannot change the evaluation are left out: the
    epoch rule's ``epochs_no_aug`` / ``epochs_with_aug`` once the epochs are fixed (by the plan
    or ``eval_epochs``), ``dsa`` / ``dsa_strategy`` under an explicit augmentation, and
    ``dsa_strategy`` without DSA, ``epochs_no_aug`` under DSA and ``epochs_with_aug`` without
    augmentation; and when both plans resolve to the same protocol on every (dataset,
    architecture) of ``where`` (e.g. ``augmentation: none`` where random's DC rule applies no
    augmentation either), nothing is overridden but the sweep's own keys."""
    from benchmarks.teacher import TEACHER_KEYS, TEACHER_LABELS, split_overrides
    from methods.protocol import apply_overrides

    plan_part, spec, _problems = split_overrides(entry_eval)
    plan = apply_overrides(method_plan, plan_part)
    teacher = spec is not None
    if plan.labels == "soft" and not teacher:
        teacher = True  # the set's own soft labels -> the teacher's for the random images
    if plan.lr_source == "learned":
        plan = dataclasses.replace(plan, lr_source="fixed")
    if where and not teacher and _same_resolution(plan, random_plan, eval_epochs, where):
        return {k: v for k, v in sorted(sweep_eval.items())}
    mine, theirs = plan.to_dict(), random_plan.to_dict()
    if plan.epochs is not None or eval_epochs is not None:
        mine.update(epochs_no_aug=theirs["epochs_no_aug"], epochs_with_aug=theirs["epochs_with_aug"])
    if str(plan.augmentation).strip().lower() != "auto":
        mine.update(dsa=theirs["dsa"], dsa_strategy=theirs["dsa_strategy"])
    elif not plan.dsa:
        mine["dsa_strategy"] = theirs["dsa_strategy"]
    else:  # 'auto' with DSA: DSA applies everywhere, so the epochs without augmentation never do
        mine["epochs_no_aug"] = theirs["epochs_no_aug"]
    if str(plan.augmentation).strip().lower() == "none":
        mine["epochs_with_aug"] = theirs["epochs_with_aug"]
    keys = {k for k in mine if mine[k] != theirs[k]} | {k for k in sweep_eval if k in mine}
    out = {k: mine[k] for k in sorted(keys)}
    if teacher:
        out["labels"] = TEACHER_LABELS
        if out.get("loss") == "kl" and "loss" not in entry_eval:
            del out["loss"]  # labels=teacher implies it (benchmarks.teacher.split_overrides)
        out.update({k: entry_eval[k] for k in TEACHER_KEYS if k in entry_eval})
    return {k: out[k] for k in sorted(out)}


_RESOLUTION_ONLY = ("dsa", "dsa_strategy", "epochs_no_aug", "epochs_with_aug")


def _same_resolution(plan: Any, other: Any, eval_epochs: Optional[int], where: Sequence[tuple[str, str]]) -> bool:
    """Whether two plans run the same protocol on every (dataset, architecture) of ``where``."""
    if eval_epochs is not None:
        plan, other = (dataclasses.replace(p, epochs=int(eval_epochs)) for p in (plan, other))
    for dataset, arch in where:
        a, b = plan.resolve(dataset, arch).to_dict(), other.resolve(dataset, arch).to_dict()
        if {k: v for k, v in a.items() if k not in _RESOLUTION_ONLY} != \
                {k: v for k, v in b.items() if k not in _RESOLUTION_ONLY}:
            return False
    return True


def _stub_data(dataset: str) -> Any:
    """A one-image :class:`methods.realdata.ClassData` named ``dataset``: what a method's
    :meth:`eval_plan` reads (the dataset's name) without loading the data."""
    import torch

    from methods.realdata import ClassData

    return ClassData(torch.zeros(1, 1, 1, 1), torch.zeros(1, dtype=torch.long), 1, (0.0,), (1.0,), name=dataset)


def _eval_suffix(own: Any, plan: Mapping[str, Any]) -> str:
    """The default-label part naming a method entry's own evaluation overrides (the spec-wide
    ones apply to every line and are left out)."""
    keys = sorted(str(k) for k in own) if isinstance(own, dict) else []
    if not keys:
        return ""
    return " [eval: " + ", ".join(f"{k}={plan[k]}" for k in keys if k in plan) + "]"


def _unwritable(path: Path) -> Optional[str]:
    """Why ``path`` cannot be used as a results folder, or None (creates nothing)."""
    if path.exists() and not path.is_dir():
        return f"{path} exists and is not a folder"
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} (a parent of {path}) is not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable (results folder {path}); choose another output"
    # os.access says yes to root everywhere; a real (removed) test directory catches
    # read-only file systems and pseudo file systems such as /proc.
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".condbench-write-test-", dir=probe))
    except OSError as exc:
        return f"{probe} is not writable (results folder {path}: {exc.strerror or exc}); choose another output"
    return None
