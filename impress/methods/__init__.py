"""Continual-learning methods over a frozen random backbone: the registry.

supsup        a dedicated supermask per task
impresslearn  a bank of m impressions; later tasks learn only mixing coefficients
batche        a shared weight and per task a rank-one fast weight per layer
finetune      the dense backbone retrained task after task (the forgetting lower bound)

Each method is one module here, a `Method` (see `impress.methods.base`) that owns everything
particular to it; the rest of the platform reads it from `METHODS`. Adding one is a module and an
entry below; the shared tests (tests/test_methods.py) then run it.
"""

from impress.methods.base import OPTIMIZERS, DivergedError, Method, train_epochs
from impress.methods.batche import BatchE
from impress.methods.finetune import Finetune
from impress.methods.impresslearn import ImpressLearn
from impress.methods.supsup import SupSup

__all__ = ["METHODS", "Method", "SupSup", "ImpressLearn", "BatchE", "Finetune", "OPTIMIZERS", "DivergedError"]
__all__ += ["train_epochs", "foreign_fields"]

METHODS: dict[str, type[Method]] = {
    "supsup": SupSup,
    "impresslearn": ImpressLearn,
    "batche": BatchE,
    "finetune": Finetune,
}


def foreign_fields(name: str) -> tuple[str, ...]:
    """Config fields that other methods read and method `name` ignores: blank in its rows of a
    trial table, so they neither label its configs nor read as NaN."""
    own = set(METHODS[name].uses) if name in METHODS else set()
    return tuple(dict.fromkeys(f for cls in METHODS.values() for f in cls.uses if f not in own))
