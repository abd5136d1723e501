"""The search space of `hydra.sweeper.params` and the command line, in the syntax of Hydra's
Optuna sweeper: `choice(16, 32)` (categorical), `range(1, 9, 2)` (integers, the end excluded
as in Python; a float step: floats), `interval(0.0, 0.2)` (uniform floats) and
`tag(log, interval(1e-5, 1e-3))` (log scale). Any other override is a fixed parameter.

`probes` gives the few configs checked before the first trial: every choice and both ends of
every interval, the other parameters at their first value. Optuna is imported only by
`distributions`.
"""

from __future__ import annotations

from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer, ValueType

from lmlab.errors import LmlabError


class SearchSpace:
    # (not a dataclass: Hydra imports plugin modules without registering them in sys.modules)
    def __init__(self) -> None:
        self.swept: dict[str, Override] = {}  # key -> its sweep
        self.fixed: dict[str, str] = {}  # key -> the override, as written

    @classmethod
    def parse(cls, arguments: list[str]) -> SearchSpace:
        """`arguments`: the params (`key=sweep`) then the command's overrides; a key given
        twice takes its last value, and a fixed value takes the key out of the search."""
        space = cls()
        for text, override in zip(arguments, OverridesParser.create().parse_overrides(arguments)):
            key = override.get_key_element()
            space.swept.pop(key, None)
            space.fixed.pop(key, None)
            if override.is_sweep_override():
                space.swept[key] = override
            else:
                space.fixed[key] = text
        return space

    def overrides(self, values: dict[str, Any]) -> list[str]:
        """A job's overrides: `key=value` for the swept keys, then the fixed overrides."""
        swept = [f"{key}={Transformer.str(values[key])}" for key in self.swept]
        return swept + list(self.fixed.values())

    def probes(self) -> list[list[str]]:
        """The overrides of the configs to check up front: all parameters at their first
        value, then each other probe value of each parameter in turn."""
        values = {key: probe_values(o) for key, o in self.swept.items()}
        first = {key: found[0] for key, found in values.items()}
        jobs = [self.overrides(first)]
        for key, found in values.items():
            jobs += [self.overrides(first | {key: value}) for value in found[1:]]
        return jobs

    def distributions(self) -> dict:
        """key -> the Optuna distribution of each swept key."""
        return {key: distribution(override) for key, override in self.swept.items()}


def _interval(override: Override):
    """(start, end, log) of an interval: floats, as Hydra parses them (integers: range)."""
    sweep = override.value()
    return float(sweep.start), float(sweep.end), "log" in sweep.tags


def _choices(override: Override) -> list:
    return list(override.sweep_iterator(transformer=Transformer.encode))


def probe_values(override: Override) -> list:
    """The values of a parameter worth checking: every choice; the ends of a range or an
    interval."""
    if override.is_interval_sweep():
        start, end, _ = _interval(override)
        return [start, end]
    if override.is_range_sweep() and not override.value().shuffle:
        found = _choices(override)
        return [found[0], found[-1]] if found else found
    if override.value_type != ValueType.GLOB_CHOICE_SWEEP and override.is_discrete_sweep():
        return _choices(override)
    raise LmlabError(
        f"hydra.sweeper.params: {override.input_line}: expected choice, range or interval"
    )


def distribution(override: Override):
    """The Optuna distribution of one swept parameter."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    key = override.get_key_element()
    if override.is_interval_sweep():
        start, end, log = _interval(override)
        if start >= end or (log and start <= 0):
            low = "0 < start < end" if log else "start < end"
            raise LmlabError(f"{key}: {override.input_line}: expected {low}")
        return FloatDistribution(start, end, log=log)
    values = probe_values(override)
    if not values:
        raise LmlabError(f"{key}: {override.input_line}: no values to choose from")
    if override.is_range_sweep() and not override.value().shuffle:
        low, high, step = min(values), max(values), abs(override.value().step)
        if all(isinstance(v, int) for v in values):
            return IntDistribution(low, high, step=step)
        return FloatDistribution(low, high, step=step)
    return CategoricalDistribution(values)
