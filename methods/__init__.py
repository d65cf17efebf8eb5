"""Condensation methods behind one interface (see :mod:`methods.base`).

Layout (one job per module): ``base`` the :class:`Method` interface; ``registry`` the registries
(methods with their table metadata; the same :class:`~methods.registry.Registry` serves networks
and datasets); ``config`` typed frozen configs and validated overrides; ``realdata`` the real
training data (:class:`ClassData`); ``synset`` the synthetic-set format; ``context`` the run
context, checkpoint stores and cost meter; ``loop`` the learned methods' resumable loop;
``rng`` seeded generators; ``errors`` the user-facing exceptions; then one file per method, the
network zoo, DSA augmentation and the training helpers.

Importing this package registers every method; one import line per method file below.
"""

from methods.base import Method  # noqa: F401
from methods.config import MethodConfig  # noqa: F401
from methods.context import CostMeter, MemoryCheckpointStore, RunContext, StopRequested  # noqa: F401
from methods.errors import MethodError, SyntheticSetFormatError  # noqa: F401
from methods.realdata import ClassData  # noqa: F401
from methods.registry import all_method_info, available_methods, get_method, method_info, register, register_variant  # noqa: F401
from methods.rng import make_generator  # noqa: F401
from methods.synset import SyntheticSet  # noqa: F401

# --- method registry: one line per method file -------------------------------------------
from methods import random_select  # noqa: F401,E402  registers "random"
from methods import herding  # noqa: F401,E402  registers "herding"
from methods import kcenter  # noqa: F401,E402  registers "kcenter"
from methods import forgetting  # noqa: F401,E402  registers "forgetting"
from methods import dc  # noqa: F401,E402  registers "dc", "dsa"
from methods import cafe  # noqa: F401,E402  registers "cafe", "cafe_dsa"
from methods import dm  # noqa: F401,E402  registers "dm"
from methods import mtt  # noqa: F401,E402  registers "mtt", "datm"
