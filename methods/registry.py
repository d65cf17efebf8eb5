"""Registries: the one place that knows each method (and, with the same class, each network
and dataset).

:class:`Registry` is the single registration style of the suite (a decorator, like timm's
``register_model``): ``methods`` registers methods here and networks in
:mod:`methods.networks`; ``benchmarks.data`` registers datasets with it.

The method registry is the single source of truth about a method. Each entry
(:class:`MethodInfo`) declares what every other part of the suite reads: the display name of
tables and legends, the family (coreset, gradient matching, ...), the table row order, the
variant relation (``dsa`` = ``dc`` with overrides), the config defaults and the description.
``benchmarks`` copies :meth:`MethodInfo.to_dict` into the expanded sweep (``cells.json``) and
every record, so ``analysis`` renders from what the suite wrote and keeps no method list.

Adding a method is one file: subclass :class:`~methods.base.Method`, decorate it with
:func:`register`, and add one import line to ``methods/__init__.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, Mapping, Optional, TypeVar

from methods.config import build_config
from methods.errors import MethodError

T = TypeVar("T")

#: The method families and how tables name them (row groups of the main table).
FAMILIES: dict[str, str] = {
    "coreset": "Coreset selection",
    "gradient_matching": "Gradient matching",
    "distribution_matching": "Distribution matching",
    "feature_alignment": "Feature alignment",
    "trajectory_matching": "Trajectory matching",
    "other": "Other",
}


class Registry(Generic[T]):
    """Case-insensitive ``name -> entry`` map filled by a decorator.

    ``kind`` names the things held ("method", "network", "dataset") in error messages;
    ``error`` is the exception raised for an unknown name (its message lists the valid names);
    ``loader`` is called once before the first lookup to import the modules that register
    (so ``get`` works without the caller importing them first)."""

    def __init__(self, kind: str, error: type[Exception] = KeyError,
                 loader: Optional[Callable[[], None]] = None) -> None:
        self.kind = kind
        self.error = error
        self._loader = loader
        self._entries: dict[str, T] = {}
        self._spelling: dict[str, str] = {}  # key -> the name as registered (for messages)

    def add(self, name: str, entry: T) -> T:
        key = name.lower()
        if key in self._entries:
            raise ValueError(f"{self.kind} name '{name}' registered twice")
        self._entries[key] = entry
        self._spelling[key] = name
        return entry

    def decorator(self, name: str, make_entry: Callable[[Any], T]) -> Callable[[Any], Any]:
        """A decorator registering ``make_entry(obj)`` under ``name`` and returning ``obj``."""

        def deco(obj: Any) -> Any:
            self.add(name, make_entry(obj))
            return obj

        return deco

    def _load(self) -> None:
        if self._loader is not None:
            loader, self._loader = self._loader, None
            loader()

    def get(self, name: str) -> T:
        self._load()
        key = str(name).lower()
        if key not in self._entries:
            valid = ", ".join(self._spelling[k] for k in sorted(self._entries))
            raise self.error(f"unknown {self.kind} '{name}'; valid {self.kind}s: {valid}")
        return self._entries[key]

    def __contains__(self, name: object) -> bool:
        self._load()
        return str(name).lower() in self._entries

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        self._load()
        return iter(sorted(self._entries.items()))


# --------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MethodInfo:
    """Everything the suite knows about one registered method or variant.

    ``overrides`` are the variant's config values over its class's defaults (empty for a base
    method); ``variant_of`` names the base method of a variant; ``order`` sorts table rows
    (coresets first, then the synthesis methods by publication year)."""

    name: str
    cls: type
    display: str
    family: str
    order: int
    description: str = ""
    overrides: Mapping[str, Any] = field(default_factory=dict)
    variant_of: Optional[str] = None

    @property
    def config_class(self) -> type:
        return self.cls.config_class

    def defaults(self) -> dict[str, Any]:
        """The effective config defaults of this entry (class defaults + variant overrides)."""
        return build_config(self.config_class, self.overrides).to_dict()

    def components(self, config: Mapping[str, Any]) -> dict[str, bool]:
        """The method's ablation switches (component name -> on/off) for a recorded config."""
        return dict(self.cls.components(config))

    def to_dict(self) -> dict[str, Any]:
        """Plain values for ``cells.json`` and records (what ``analysis`` reads)."""
        return {
            "name": self.name,
            "display": self.display,
            "family": self.family,
            "family_display": FAMILIES[self.family],
            "order": int(self.order),
            "variant_of": self.variant_of,
            "overrides": dict(self.overrides),
            "description": self.description,
            "learned": bool(getattr(self.cls, "learned", True)),
        }


def _import_all() -> None:
    # Importing the package registers every method (one import line per method file there).
    import methods  # noqa: F401


METHODS: Registry[MethodInfo] = Registry("method", MethodError, loader=_import_all)


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown method family '{family}'; valid: {', '.join(FAMILIES)}")


def register(name: str, *, display: str, family: str, order: int, description: str = "",
             overrides: Optional[Mapping[str, Any]] = None):
    """Class decorator registering a method under ``name`` with its table metadata. Use
    :func:`register_variant` for a named config override of an existing method (e.g. ``dsa`` =
    ``dc`` with ``dsa=True``)."""
    _check_family(family)

    def make(cls: type) -> MethodInfo:
        desc = description or (cls.__doc__ or "").strip().split("\n")[0]
        return MethodInfo(name.lower(), cls, display, family, int(order), desc, dict(overrides or {}))

    return METHODS.decorator(name, make)


def register_variant(name: str, base: str, overrides: Mapping[str, Any], *, display: str, order: int,
                     description: str, family: Optional[str] = None) -> None:
    """Register ``name`` as the method registered as ``base`` with config ``overrides``."""
    parent = METHODS._entries[base.lower()]
    fam = family or parent.family
    _check_family(fam)
    merged = dict(parent.overrides)
    merged.update(overrides)
    METHODS.add(name, MethodInfo(name.lower(), parent.cls, display, fam, int(order), description, merged,
                                 variant_of=parent.name))


def method_info(name: str) -> MethodInfo:
    """The registry entry of ``name``; raises :class:`MethodError` listing the valid names."""
    return METHODS.get(name)


def all_method_info() -> list[MethodInfo]:
    """Every registered method and variant, in table order."""
    return sorted((info for _, info in METHODS.items()), key=lambda i: (i.order, i.name))


def available_methods() -> dict[str, str]:
    """Registered method names -> one-line descriptions."""
    return {k: v.description for k, v in METHODS.items()}


def method_config_class(name: str) -> type:
    return method_info(name).config_class


def method_base_overrides(name: str) -> dict[str, Any]:
    return dict(method_info(name).overrides)


def get_method(name: str, overrides: Optional[Mapping[str, Any]] = None):
    """Build the method registered as ``name`` with the variant's and the user's overrides."""
    info = method_info(name)
    merged = dict(info.overrides)
    merged.update(overrides or {})
    config = build_config(info.config_class, merged)
    return info.cls(config, name=info.name)
