"""The registry of Table 3's methods: a method is a module, plus one line here."""

from . import global_blend, metaselector, sample_level, simplified, singles, stacking
from .base import Method

# Each entry maps a run's configuration to the methods it contributes, in the report's order.
REGISTRY = [
    singles.methods,
    sample_level.methods,
    global_blend.methods,
    stacking.methods,
    metaselector.methods,
    simplified.methods,
    metaselector.ablations,
    metaselector.adaptation_then_blend,
]


def table3_methods(config) -> list[Method]:
    return [method for contribute in REGISTRY for method in contribute(config)]


__all__ = ["Method", "REGISTRY", "table3_methods"]
