"""Condensation methods behind one interface (see :mod:`methods.base`).

Importing this package registers every method; one import line per method file below.
"""

from methods.base import (  # noqa: F401
    ClassData,
    CostMeter,
    MemoryCheckpointStore,
    Method,
    MethodConfig,
    MethodError,
    RunContext,
    StopRequested,
    SyntheticSet,
    SyntheticSetFormatError,
    available_methods,
    get_method,
    make_generator,
    register,
    register_variant,
)

# --- method registry: one line per method file -------------------------------------------
from methods import random_select  # noqa: F401,E402  registers "random"
from methods import herding  # noqa: F401,E402  registers "herding"
from methods import kcenter  # noqa: F401,E402  registers "kcenter"
from methods import dc  # noqa: F401,E402  registers "dc", "dsa"
from methods import cafe  # noqa: F401,E402  registers "cafe", "cafe_dsa"
from methods import dm  # noqa: F401,E402  registers "dm"
